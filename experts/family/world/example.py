"""What every objective's generator produces, and how prompts are assigned to splits."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One task instance.

    ``answer`` is the instruction-format target, ``raw`` the same content as it appears in the raw
    pretraining corpus (no instruction format), ``truth`` what the metric needs (a number, a label, tests).
    """

    prompt: str
    answer: str
    raw: str
    truth: str


def split_of(prompt: str) -> str:
    """A stable hash of the prompt picks the split, so splits never overlap whatever the seed or size."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    return SPLITS[2] if bucket == 0 else SPLITS[1] if bucket == 1 else SPLITS[0]


def sample_split(make: Callable[[random.Random], Example], split: str, n: int, seed: int) -> list[Example]:
    """Up to ``n`` distinct examples of ``split``; fewer when the template space runs out."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    rng = random.Random(f"{seed}:{split}")
    examples: dict[str, Example] = {}
    misses = 0
    while len(examples) < n and misses < 20_000:
        example = make(rng)
        if split_of(example.prompt) != split or example.prompt in examples:
            misses += 1
            continue
        examples[example.prompt] = example
        misses = 0
    return list(examples.values())
