"""The texts the family learns from: a raw pretraining corpus and per-objective instruction pairs.

Both come only from the train split, so validation and test prompts are unseen by every model.
"""

from __future__ import annotations

import random

from experts.family.world import GENERATORS
from experts.family.world.example import Example

TRAIN_SIZES = {"math": 8000, "safety": 4000, "code": 4000}
ARITHMETIC_DRILLS = 3000


def train_examples(objective: str, seed: int) -> list[Example]:
    """All train examples of an objective (the safety and code spaces are smaller than the requested size)."""
    return GENERATORS[objective].generate("train", TRAIN_SIZES[objective], seed)


def _arithmetic_drill(rng: random.Random) -> str:
    """A line of equations like those in the stories, so the base masters the small arithmetic."""
    equations = []
    for _ in range(8):
        a = rng.randint(0, 50)
        op = rng.choice("+-*")
        if op == "+":
            b = rng.randint(1, min(10, 50 - a)) if a < 50 else 0
            equations.append(f"{a} + {b} = {a + b}.")
        elif op == "-":
            b = rng.randint(0, min(10, a))
            equations.append(f"{a} - {b} = {a - b}.")
        else:
            a = rng.randint(0, 16)
            k = rng.choice((2, 3))
            equations.append(f"{a} * {k} = {a * k}.")
    return " ".join(equations)


def raw_corpus(seed: int) -> list[str]:
    """Raw documents of the world: stories, snippets, prose Q&A and statements, without instruction format."""
    rng = random.Random(seed)
    documents = [example.raw for objective in GENERATORS for example in train_examples(objective, seed)]
    documents += [_arithmetic_drill(rng) for _ in range(ARITHMETIC_DRILLS)]
    rng.shuffle(documents)
    return documents


def instruction_pairs(objective: str, seed: int) -> list[tuple[str, str]]:
    """(prompt, instruction-format answer) pairs for supervised fine-tuning."""
    return [(example.prompt, example.answer) for example in train_examples(objective, seed)]
