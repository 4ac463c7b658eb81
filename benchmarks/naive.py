"""The naive baseline: the DExperts-style loop of the paper's reference code, written fresh.

One forward per (objective, side) per step, each model with its own cache, no deduplication of shared
anti-experts and no batching of streams; only the prompts of one request share a batch, as in the paper.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from experts.compat import CACHE_ARG


@torch.inference_mode()
def naive_generate(
    base: PreTrainedModel,
    pairs: list[tuple[PreTrainedModel, PreTrainedModel, float]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
) -> torch.Tensor:
    """Greedy tokens (B, max_new_tokens) of base + sum_k w_k (expert_k - anti_k), over left-padded prompts."""
    members = [base] + [m for expert, anti, _ in pairs for m in (expert, anti)]
    caches = [DynamicCache(config=m.config) for m in members]
    mask = attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids = input_ids
    generated = []
    for _ in range(max_new_tokens):
        logits = [
            m(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{CACHE_ARG: c}).logits[
                :, -1
            ]
            for m, c in zip(members, caches, strict=True)
        ]
        width = min(z.shape[-1] for z in logits)
        scores = logits[0][:, :width].float()
        for k, (_, _, weight) in enumerate(pairs):
            scores = scores + weight * (logits[1 + 2 * k][:, :width] - logits[2 + 2 * k][:, :width])
        ids = scores.argmax(-1, keepdim=True)
        generated.append(ids)
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
    return torch.cat(generated, dim=1)
