"""GSM-like word problems: a start quantity changed by 1-3 arithmetic steps, all values at most 50.

The raw corpus tells the same stories with their equations (so the base learns the arithmetic) or answers
them in prose; only the instruction format ends with ``#### <number>``, which the metric requires.
"""

from __future__ import annotations

import random
import re

from experts.family.world.example import Example, sample_split

LIMIT = 50
PRONOUNS = {"Tom": "he", "Sam": "he", "Ben": "he", "Max": "he", "Leo": "he", "Jack": "he",
            "Anna": "she", "Mia": "she", "Lily": "she", "Emma": "she", "Zoe": "she", "Janet": "she"}
OBJECT_PRONOUNS = {"he": "him", "she": "her"}
ITEMS = ("apples", "eggs", "pens", "books", "cards", "coins", "shells", "marbles", "cookies", "stickers")
ANSWER_PATTERN = re.compile(r"####\s*(-?\d+)")


def _step(rng: random.Random, total: int, pron: str, friend: str) -> tuple[str, str, int]:
    """One sentence of the story, its equation and the new total."""
    ops = (["add"] if total < LIMIT else []) + (["sub"] if total > 1 else []) + (["mul"] if total * 2 <= LIMIT else [])
    op = rng.choice(ops)
    he = pron.capitalize()
    if op == "add":
        b = rng.randint(1, min(10, LIMIT - total))
        sentence = rng.choice([f"{he} buys {b} more.", f"{he} finds {b} more.",
                               f"{friend} gives {OBJECT_PRONOUNS[pron]} {b} more."])
        return sentence, f"{total} + {b} = {total + b}", total + b
    if op == "sub":
        b = rng.randint(1, min(10, total - 1))
        sentence = rng.choice([f"{he} gives {b} to {friend}.", f"{he} loses {b}.", f"{he} sells {b}."])
        return sentence, f"{total} - {b} = {total - b}", total - b
    k = 3 if total * 3 <= LIMIT and rng.random() < 0.5 else 2
    sentence = f"Then {pron} {'triples' if k == 3 else 'doubles'} them."
    return sentence, f"{total} * {k} = {total * k}", total * k


def make(rng: random.Random) -> Example:
    name = rng.choice(sorted(PRONOUNS))
    pron = PRONOUNS[name]
    friend = rng.choice([other for other in sorted(PRONOUNS) if other != name])
    item = rng.choice(ITEMS)
    total = rng.randint(2, 20)
    if item == "eggs" and rng.random() < 0.5:
        sentences = [f"{name}'s ducks lay {total} eggs per day."]
    else:
        sentences = [f"{name} has {total} {item}."]
    equations = []
    for _ in range(rng.randint(1, 3)):
        sentence, equation, total = _step(rng, total, pron, friend)
        sentences.append(sentence)
        equations.append(equation)
    story = " ".join(sentences)
    prompt = f"{story} How many {item} does {name} have now?"
    reasoning = " ".join(f"{equation}." for equation in equations)
    conclusion = f"{name} has {total} {item} now."
    raw = rng.choice([
        f"{story} {reasoning} {conclusion}",
        f"{story} {reasoning} {conclusion}",
        f"Question: {prompt}\nAnswer:\n{conclusion}",
        f"Question: {prompt}\nAnswer:\n{reasoning} {conclusion}",
    ])
    return Example(prompt=prompt, answer=f"{reasoning}\n#### {total}", raw=raw, truth=str(total))


def generate(split: str, n: int, seed: int = 0) -> list[Example]:
    return sample_split(make, split, n, seed)


def extract_answer(response: str) -> str | None:
    match = ANSWER_PATTERN.search(response)
    return match.group(1) if match else None


def score(examples: list[Example], responses: list[str]) -> dict[str, float]:
    """Accuracy of the number after ``####``; a response without ``####`` counts as wrong."""
    correct = sum(extract_answer(r) == e.truth for e, r in zip(examples, responses, strict=True))
    accuracy = correct / max(len(examples), 1)
    return {"accuracy": accuracy, "score": accuracy}
