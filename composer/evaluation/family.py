"""The systems compared in the miniature reproduction, all built from the tiny family with the Composer.

The base and the anti-expert read the raw question/answer format they were pretrained on; experts and the
directly tuned model read their chat template. Every system is a Composer, so the numbers measure the
engine that users run: the objectives are the default tiny recipe's (conf/recipe/tiny.yaml), guards included.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

from composer.config import build_objectives, compose
from composer.engine import Composer
from composer.objectives import Member, Objective
from experts.family import BASE, MODELS_DIR, OBJECTIVES, TUNED, base_prompt, expert_name
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


@functools.cache
def recipe_objectives() -> dict[str, Objective]:
    """The tiny recipe's objectives as ``proxy-compose`` builds them (no weights load): the pairs, their formats
    and their guards (safety is protected) come from the shipped config, not from a copy here."""
    return {o.name: o for o in build_objectives(compose(["recipe=tiny"]))}


def proxy_objective(objective: str, weight: float = 1.0) -> Objective:
    return dataclasses.replace(recipe_objectives()[objective], weight=weight)


def multi_objectives(weights: Mapping[str, float]) -> list[Objective]:
    """Every objective at its weight: the composition that the evaluation and the weight selection measure."""
    return [proxy_objective(o, weights[o]) for o in OBJECTIVES]


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
        return Composer(member(BASE, chat=False), multi_objectives(multi_weights))
    raise ValueError(f"unknown system {system!r}; use one of {SYSTEMS}")
