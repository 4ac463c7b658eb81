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


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log-probability under the composed distribution, with the most likely tokens'."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), most likely first


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> list[TokenLogprobs]:
    """logits: (B, V) composed (before temperature and the other sampling warpers, as OpenAI's log-probs are);
    chosen: (B,)."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    picked = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    values, ids = logprobs.topk(top, dim=-1) if top else (logprobs[:, :0], chosen[:, None][:, :0])
    rows = zip(chosen.tolist(), picked, ids.tolist(), values.tolist(), strict=True)
    return [TokenLogprobs(token, logprob, list(zip(i, v, strict=True))) for token, logprob, i, v in rows]
