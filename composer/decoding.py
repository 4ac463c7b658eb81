"""Decoding settings and the transformers processors that implement them (reused, never rewritten)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from composer.session import Session
from experts.errors import UserInputError, check_whole

_SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p")


@dataclass(frozen=True)
class DecodingConfig:
    """The knobs of transformers' GenerationConfig that apply to composed decoding, with its defaults."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, Iterable) or isinstance(stop, bytes):
            raise UserInputError(f"decoding.stop={self.stop!r} must be a string or a list of strings")
        object.__setattr__(self, "stop", tuple(stop))
        if self.seed is not None:
            check_whole("decoding.seed", self.seed, minimum=0, maximum=2**64 - 1)  # torch.manual_seed's range
        check_whole("decoding.max_new_tokens", self.max_new_tokens, minimum=1)
        check_whole("decoding.num_return_sequences", self.num_return_sequences, minimum=1)
        if self.top_k is not None:
            check_whole("decoding.top_k", self.top_k, minimum=1)
        _number("temperature", self.temperature, low=0.0, low_open=self.do_sample)  # lm-eval's greedy sets 0
        if self.top_p is not None:
            _number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        if self.min_p is not None:
            _number("min_p", self.min_p, low=0.0, high=1.0)
        if self.repetition_penalty is not None:
            _number("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UserInputError(f"decoding.stop={list(self.stop)!r} must be a list of non-empty strings")
        if self.num_return_sequences > 1 and not self.do_sample:
            raise UserInputError("num_return_sequences > 1 needs do_sample=true; greedy samples would be identical")
        ignored = [name for name in _SAMPLING_ONLY if getattr(self, name) != getattr(DecodingConfig, name)]
        if ignored and not self.do_sample:  # transformers' GenerationConfig logs the same
            warnings.warn(
                f"decoding: {', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} only when sampling; "
                "greedy decoding ignores it (set do_sample=true, or leave it unset)",
                stacklevel=3,
            )

    def processors(self) -> LogitsProcessorList:
        """Built-ins first, then the sampling warpers in transformers' own order."""
        chain = LogitsProcessorList()
        if self.repetition_penalty not in (None, 1.0):
            chain.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                chain.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k is not None:
                chain.append(TopKLogitsWarper(self.top_k))
            if self.top_p is not None and self.top_p < 1.0:
                chain.append(TopPLogitsWarper(self.top_p))
            if self.min_p is not None and self.min_p > 0.0:
                chain.append(MinPLogitsWarper(self.min_p))
        return chain

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def choose(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens (B,) from processed scores (B, V)."""
    if not do_sample:
        return scores.argmax(-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def drop_finished(
    session: Session, rows: torch.Tensor, finished: Collection[int], *per_row: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Stop computing rows that ended: the session and each ``per_row`` tensor keep only the others.

    ``rows`` (B,) names each current row by its index in the caller's batch; returns the kept ``rows`` and
    tensors. A finished row left in the batch would cost a full row of every forward until the longest ends.
    """
    keep = [i for i, row in enumerate(rows.tolist()) if row not in finished]
    if len(keep) == len(rows) or not keep:
        return rows, per_row
    index = torch.tensor(keep)
    session.select(index)
    return rows[index], tuple(t.index_select(0, index.to(t.device)) for t in per_row)


def as_decoding(config: DecodingConfig | Mapping[str, Any] | None) -> DecodingConfig:
    """A config given as a DecodingConfig, a mapping of its fields (as transformers' generate takes keyword
    arguments), or None for the defaults."""
    if config is None:
        return DecodingConfig()
    if isinstance(config, DecodingConfig):
        return config
    if not isinstance(config, Mapping):
        raise UserInputError(f"config={config!r}: give a DecodingConfig or a mapping of its fields")
    unknown = sorted(set(config) - {f.name for f in fields(DecodingConfig)})
    if unknown:
        raise UserInputError(f"config names unknown decoding setting(s) {unknown}; see DecodingConfig's fields")
    return DecodingConfig(**config)


def _number(key: str, value: object, low: float, high: float = math.inf, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        upper = f" and <= {high}" if math.isfinite(high) else ""
        raise UserInputError(f"decoding.{key}={value!r} must be a number {bound}{upper}")
