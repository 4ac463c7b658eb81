"""A slow, obviously correct oracle: every model recomputed from scratch at every step, in float64."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from composer import Objective


def _logits(path: str, ids: list[int], cache: dict) -> torch.Tensor:
    if path not in cache:
        cache[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    with torch.no_grad():
        return cache[path](torch.tensor([ids])).logits[0, -1]


def reference_decode(
    base: str, objectives: list[Objective], prompt: str, steps: int, weights: dict[str, float] | None = None
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and the composed logits before each of them, one prompt, no batching, no cache."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    models: dict = {}
    weights = weights or {}
    generated: list[int] = []
    all_logits = []
    for t in range(steps):
        z = _logits(base, tokenizer(prompt)["input_ids"] + generated, models)
        width = z.shape[0]
        for o in objectives:
            w = weights.get(o.name, o.weight) * o.schedule(t)
            e = _logits(o.expert.model.path, o.expert.format.render(prompt, tokenizer) + generated, models)
            a = _logits(o.anti.model.path, o.anti.format.render(prompt, tokenizer) + generated, models)
            width = min(width, e.shape[0], a.shape[0])
            z = z[:width] + w * (e[:width] - a[:width])
        all_logits.append(z)
        generated.append(int(z.argmax()))
    return generated, all_logits
