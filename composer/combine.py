"""The composition formula as a pure function: z = s_base + sum_k w_k * (s_expert_k - s_anti_k)."""

from __future__ import annotations

import torch
from einops import einsum


def combine(base: torch.Tensor, experts: torch.Tensor, antis: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Composed logits, shape ``(*lead, V)``.

    base: ``(*lead, V)``; experts, antis: ``(K, *lead, V)``; weights: ``(K, *lead)``.

    Masked logits (-inf) never produce NaN: a token is masked in the result when the base masks it, or when
    an objective with a non-zero weight masks it on either side (its difference is then undefined). A row
    in which that would mask every token falls back to the base. Huge weights saturate at the dtype's
    largest value rather than overflow. Inputs are not modified.
    """
    if experts.shape[0] == 0:
        return base.clone()
    active = (weights != 0).unsqueeze(-1)  # (K, *lead, 1)
    finite = torch.isfinite(experts) & torch.isfinite(antis)  # (K, *lead, V)
    delta = torch.where(finite, experts - antis, 0.0)
    steered = base + einsum(weights.to(delta.dtype), delta, "k ..., k ... v -> ... v")
    masked = (~finite & active).any(0) | ~torch.isfinite(base) | torch.isnan(steered)
    top = torch.finfo(steered.dtype).max  # huge weights saturate instead of overflowing to inf (and NaN)
    composed = steered.clamp(-top, top).masked_fill(masked, float("-inf"))
    nothing_left = masked.all(-1, keepdim=True)
    return torch.where(nothing_left, base, composed)
