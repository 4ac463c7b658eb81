"""The systems compared in the miniature reproduction, all built from the tiny family with the Composer.

The base and the anti-expert read the raw question/answer format they were pretrained on; experts and the
directly tuned model read their chat template. Every system is a Composer, so the numbers measure the
engine that users run.
"""

from __future__ import annotations

from collections.abc import Mapping

from composer.engine import Composer
from composer.objectives import Member, Objective
from experts.family import BASE, MODELS_DIR, OBJECTIVES, SMALL, TUNED, base_prompt, expert_name
from experts.loading import ModelSpec
from experts.prompts import Chat, Template

SYSTEMS = ("base", "tuned", "expert", "proxy", "multi")
# Every expert also carries the instruction-following delta they share, so the composition of all objectives
# weighs each below 1: chosen on the validation split by composer.evaluation.select_weight (the default tiny
# recipe uses the same).
MULTI_WEIGHTS: dict[str, float] = {"math": 0.5, "safety": 0.1, "code": 0.5}
RAW = Template(base_prompt("{prompt}"))


def member(name: str, chat: bool) -> Member:
    return Member(ModelSpec(str(MODELS_DIR / name)), Chat() if chat else RAW)


def proxy_objective(objective: str, weight: float = 1.0) -> Objective:
    return Objective(objective, member(expert_name(objective), chat=True), member(SMALL, chat=False), weight=weight)


def build_system(system: str, objective: str, multi_weights: Mapping[str, float] = MULTI_WEIGHTS) -> Composer:
    """base, tuned, expert alone, single-objective proxy, or the composition of every objective."""
    if system == "base":
        return Composer(member(BASE, chat=False))
    if system == "tuned":
        return Composer(member(TUNED, chat=True))
    if system == "expert":
        return Composer(member(expert_name(objective), chat=True))
    if system == "proxy":
        return Composer(member(BASE, chat=False), [proxy_objective(objective)])
    if system == "multi":
        return Composer(member(BASE, chat=False), [proxy_objective(o, multi_weights[o]) for o in OBJECTIVES])
    raise ValueError(f"unknown system {system!r}; use one of {SYSTEMS}")
