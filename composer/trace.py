"""Per-token explanation of what each objective did to the chosen token."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenTrace:
    token_id: int
    token: str  # the vocabulary's own piece ('Ġthe' in byte-level BPE)
    text: str  # what it adds to the decoded text (' the')
    contributions: dict[str, float]  # objective -> w_k * (s_expert_k - s_anti_k) at the chosen token
    base_rank: int  # 0 = the base's own top-1
    composed_rank: int
    flipped_top1: bool  # steering changed the top-1 away from the base's


def trace_row(
    logits: torch.Tensor,
    base: torch.Tensor,
    experts: torch.Tensor,
    antis: torch.Tensor,
    weights: torch.Tensor,
    names: list[str],
    token_id: int,
    token: str,
    text: str,
) -> TokenTrace:
    """logits, base: (V,); experts, antis: (K, V); weights: (K,)."""
    delta = experts[:, token_id] - antis[:, token_id]
    contributions = torch.where(weights == 0, 0.0, weights * delta).tolist()
    return TokenTrace(
        token_id=token_id,
        token=token,
        text=text,
        contributions=dict(zip(names, contributions, strict=True)),
        base_rank=int((base > base[token_id]).sum()),
        composed_rank=int((logits > logits[token_id]).sum()),
        flipped_top1=bool(base.argmax() != logits.argmax()),
    )
