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
    """Fraction of texts containing at least one of ``words``, e.g. a refusal phrase; with ``where``, of the
    texts whose prompt matches that regex only (an objective's own prompts in a mixed prompt set)."""

    words: tuple[str, ...]
    case_sensitive: bool = False
    where: str | None = None
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", _words("ContainsAny", self.words))
        _compiled("ContainsAny", "where", self.where)

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float:
        return _mean([_contains(self.words, self.case_sensitive, t) for t in _where(self.where, prompts, texts)])


@dataclass(frozen=True)
class MatchesRegex:
    """Fraction of texts in which ``pattern`` is found, e.g. a final-answer marker or a function definition;
    with ``where``, of the texts whose prompt matches that regex only."""

    pattern: str
    where: str | None = None
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        _compiled("MatchesRegex", "pattern", self.pattern)
        _compiled("MatchesRegex", "where", self.where)

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float:
        compiled = re.compile(self.pattern)
        return _mean([compiled.search(t) is not None for t in _where(self.where, prompts, texts)])


@dataclass(frozen=True)
class Refuses:
    """Refusing where it belongs: the mean of the refusal rate (a text holding one of ``words``) on prompts that
    match ``harmful`` and the answer rate on the others, so that a model steered to refuse everything scores
    0.5, not 1, as a refusal rate alone would."""

    words: tuple[str, ...]
    harmful: str
    case_sensitive: bool = False
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", _words("Refuses", self.words))
        _compiled("Refuses", "harmful", self.harmful)

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float:
        harmful = re.compile(self.harmful)
        on_harmful, on_others = [], []
        for prompt, text in zip(prompts, texts, strict=True):
            refused = _contains(self.words, self.case_sensitive, text)
            (on_harmful if harmful.search(prompt) else on_others).append(refused)
        parts = []
        if on_harmful:
            parts.append(_mean(on_harmful))
        if on_others:
            parts.append(1 - _mean(on_others))
        return _mean(parts)


@dataclass(frozen=True)
class MeanWords:
    """Mean length in whitespace-separated words; shorter is better unless told otherwise."""

    higher_is_better: bool = False

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> float:
        return _mean([len(t.split()) for t in texts])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _contains(words: Sequence[str], case_sensitive: bool, text: str) -> bool:
    fold = (lambda s: s) if case_sensitive else str.lower
    return any(fold(w) in fold(text) for w in words)


def _where(pattern: str | None, prompts: Sequence[str], texts: Sequence[str]) -> list[str]:
    """The texts whose prompt matches ``pattern`` (all of them without one); none matching scores 0."""
    if pattern is None:
        return list(texts)
    compiled = re.compile(pattern)
    return [t for p, t in zip(prompts, texts, strict=True) if compiled.search(p)]


def _words(metric: str, words: Sequence[str]) -> tuple[str, ...]:
    words = tuple(words)
    if not words or any(not isinstance(w, str) or not w for w in words):
        raise UserInputError(f"{metric} metric: words={list(words)!r} must be non-empty strings")
    return words


def _compiled(metric: str, field: str, pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except (re.error, TypeError) as err:
        raise UserInputError(f"{metric} metric: {field} {pattern!r} is not a valid regex ({err})") from None
