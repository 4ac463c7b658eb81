"""A local model cut to the support a black-box endpoint would reveal: its top-k log-probs, -inf elsewhere.

``top_logprobs: K`` on a local model gives the same scores an endpoint serving it with ``top_logprobs=K``
returns, so that a composition over an endpoint can be compared with one over the local model, token for token.
"""

from __future__ import annotations

import math

import torch


def top_logprobs(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits (..., V) -> float64 log-probs on the top ``k`` tokens and -inf elsewhere, as an endpoint computes
    them (``composer.trace.token_logprobs``: log_softmax in float64 over the whole vocabulary)."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return torch.full_like(logprobs, -math.inf).scatter(-1, ids, values)


class TopLogprobsStream:
    """A stream whose outputs are cut to their top-k support; everything else is the wrapped stream's."""

    def __init__(self, stream: object, k: int) -> None:
        self.stream = stream
        self.k = k

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)

    def start(self, rows: list[list[int]]) -> torch.Tensor:
        return top_logprobs(self.stream.start(rows), self.k)

    def merge(self, other: TopLogprobsStream) -> None:
        self.stream.merge(other.stream)

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        return top_logprobs(self.stream.extend(tokens), self.k)

    def tail_logits(self, rows: list[list[int]], keep: int) -> torch.Tensor:
        return top_logprobs(self.stream.tail_logits(rows, keep), self.k)
