"""Scoring given continuations under the composed distribution, for multiple-choice evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from composer.combine import combine
from composer.plan import Slot
from composer.units import open_stream
from composer.weights import WeightOverride, row_weights
from experts.errors import UserInputError
from experts.stream import check_fits

if TYPE_CHECKING:
    from composer.engine import Composer


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # log p_composed(continuation | prompt)
    is_greedy: bool  # every continuation token was the composed argmax


def score_continuations(
    composer: Composer, prompts: list[str], continuations: list[str], weights: WeightOverride
) -> list[ContinuationScore]:
    """Each stream sees its own prompt format followed by the continuation's tokens, in one forward."""
    if len(prompts) != len(continuations):
        raise UserInputError(f"got {len(prompts)} prompts but {len(continuations)} continuations; pair them up")
    for index, (prompt, continuation) in enumerate(zip(prompts, continuations, strict=True)):
        if not prompt or not continuation:
            raise UserInputError(f"pair {index} has an empty prompt or continuation; both need text")
    if not prompts:
        raise UserInputError("no prompts were given; pass at least one pair of prompt and continuation")
    table, _ = row_weights(composer.objectives, len(prompts), weights, composer.override_guards)
    targets = [composer.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    empty = [index for index, target in enumerate(targets) if not target]
    if empty:
        raise UserInputError(f"continuation(s) {empty} have no tokens (only whitespace?); give each visible text")
    slots = _slot_logits(composer, prompts, targets)
    plan = composer.plan
    scores = []
    for b, target in enumerate(targets):
        base = slots[plan.base][b]
        schedule = torch.tensor([[o.schedule(t) for t in range(len(target))] for o in plan.objectives])
        weights_b = table[:, b : b + 1] * schedule.reshape(len(plan.objectives), len(target))
        composed = combine(
            base, _stack(slots, plan.experts, b, base), _stack(slots, plan.antis, b, base), weights_b.to(base)
        )
        ids = torch.tensor(target, device=composed.device)
        logprobs = torch.log_softmax(composed, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        is_greedy = bool((composed.argmax(-1) == ids).all())
        scores.append(ContinuationScore(logprob=float(logprobs.sum()), is_greedy=is_greedy))
    return scores


def _stack(slots: dict[Slot, list[torch.Tensor]], refs: list[Slot], b: int, like: torch.Tensor) -> torch.Tensor:
    if not refs:
        return like.new_empty((0, *like.shape))
    return torch.stack([slots[s][b] for s in refs])


def _slot_logits(composer: Composer, prompts: list[str], targets: list[list[int]]) -> dict[Slot, list[torch.Tensor]]:
    """Per slot, per prompt: the logits predicting each continuation token, (n_b, V), on the base's device."""
    plan = composer.plan
    device = composer.models[plan.base.group].device
    keep = max(len(t) for t in targets) + 1
    by_slot: dict[Slot, list[torch.Tensor]] = {}
    for group, (model, formats) in enumerate(zip(composer.models, plan.formats, strict=True)):
        rows = [fmt.render(p, model.tokenizer) + t for fmt in formats for p, t in zip(prompts, targets, strict=True)]
        stream = open_stream(model)
        check_fits(model, [len(r) for r in rows], 0)
        logits = stream.tail_logits(rows, keep)[..., : composer.vocab_width]
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        for f in range(len(formats)):
            by_slot[Slot(group, f)] = [
                logits[f * len(prompts) + b, keep - len(t) - 1 : keep - 1].to(device=device, dtype=dtype)
                for b, t in enumerate(targets)
            ]
    return by_slot
