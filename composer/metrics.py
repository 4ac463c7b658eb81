"""Cheap automatic metrics, one per objective in a recipe, so that a weight sweep has numbers to compare.

A metric maps the prompts and generated texts of a run to one number. Recipes build them with ``_target_``
(e.g. ``metric: {_target_: composer.metrics.ContainsAny, words: ["can't help"]}``); a user's own metric is any
class with the same call signature and a ``higher_is_better`` attribute, in a module listed in allow_targets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from experts.errors import UserInputError


class Metric(Protocol):
    higher_is_better: bool

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float: ...


@dataclass(frozen=True)
class ContainsAny:
    """Fraction of texts containing at least one of ``words``, e.g. a refusal phrase."""

    words: tuple[str, ...]
    case_sensitive: bool = False
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", tuple(self.words))
        if not self.words or any(not isinstance(w, str) or not w for w in self.words):
            raise UserInputError(f"ContainsAny metric: words={list(self.words)!r} must be non-empty strings")

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float:
        fold = (lambda s: s) if self.case_sensitive else str.lower
        words = [fold(w) for w in self.words]
        return _mean([any(w in fold(t) for w in words) for t in texts])


@dataclass(frozen=True)
class MatchesRegex:
    """Fraction of texts in which ``pattern`` is found, e.g. a final-answer marker or a function definition."""

    pattern: str
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise UserInputError(
                f"MatchesRegex metric: pattern {self.pattern!r} is not a valid regex ({err})"
            ) from None

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float:
        compiled = re.compile(self.pattern)
        return _mean([compiled.search(t) is not None for t in texts])


@dataclass(frozen=True)
class MeanWords:
    """Mean length in whitespace-separated words; shorter is better unless told otherwise."""

    higher_is_better: bool = False

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float:
        return _mean([len(t.split()) for t in texts])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
