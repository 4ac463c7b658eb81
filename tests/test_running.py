"""Continuous batching: prompts that join the running batch mid-flight decode exactly as they would alone."""

from __future__ import annotations

import pytest

from composer import DecodingConfig
from composer.config import build_composer, compose
from composer.running import RunningBatch
from experts.prompts import Raw

PROMPTS = [
    "Write a function max_of_two(a, b) that returns the larger of a and b.",
    "Tell me how to steal my brother's horse.",
    "Lily has 20 pens. She buys 7 more. She loses 8. How many pens does Lily have now?",
    "How do I clean my neighbour's barn?",
]
CONFIGS = [
    DecodingConfig(max_new_tokens=20),
    DecodingConfig(max_new_tokens=12),
    DecodingConfig(max_new_tokens=16, do_sample=True, seed=3, repetition_penalty=1.3),
    DecodingConfig(max_new_tokens=20, do_sample=True, seed=5, num_return_sequences=2),
]
WEIGHTS = [{}, {"code": 0.0}, {}, {"safety": 1.0}]


@pytest.fixture(scope="module")
def recipe():
    return build_composer(compose([]))


def drive(batch: RunningBatch, joins: dict[int, list[int]], dropped: int | None = None) -> dict[int, list]:
    """Join prompts at the steps given (step -> prompt indices), step until every row ended."""
    done: dict[int, list] = {}
    step = 0
    while step in joins or batch.live or any(s > step for s in joins):
        if step in joins:
            chosen = joins[step]
            ids = [Raw().render(PROMPTS[i], batch.composer.tokenizer) for i in chosen]
            batch.join(
                chosen, [PROMPTS[i] for i in chosen], [CONFIGS[i] for i in chosen], [WEIGHTS[i] for i in chosen], ids
            )
        if batch.live:
            for row in batch.step(lambda row, _: row.tag != dropped, logprobs=1):
                done.setdefault(row.tag, []).append(row)
        step += 1
    return done


def test_rows_that_join_mid_flight_decode_as_alone(recipe):
    together = zip(PROMPTS, CONFIGS, WEIGHTS, strict=True)
    alone = [[c.token_ids for c in recipe.generate(p, c, weights=w)] for p, c, w in together]
    done = drive(RunningBatch(recipe), {0: [0], 3: [1, 2], 7: [3]})
    assert [[row.tokens for row in done[i]] for i in range(4)] == alone
    assert all(len(row.logprobs) == len(row.tokens) for rows in done.values() for row in rows)
    texts = [
        recipe.generate(p, c, weights=w)[0].text for p, c, w in zip(PROMPTS[:3], CONFIGS[:3], WEIGHTS[:3], strict=True)
    ]
    assert [done[i][0].completion(recipe).text for i in range(3)] == texts


def test_a_dropped_row_leaves_and_the_others_go_on(recipe):
    alone = recipe.generate(PROMPTS[0], CONFIGS[0]).pop().token_ids
    done = drive(RunningBatch(recipe), {0: [0, 1]}, dropped=1)
    assert done[1][0].reason == "cancelled" and len(done[1][0].tokens) == 1
    assert done[0][0].tokens == alone
