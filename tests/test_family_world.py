"""The tiny world's generators, metrics and sandbox, and the committed model family."""

from __future__ import annotations

import itertools

import pytest

from experts.family import BASE, MODELS_DIR, OBJECTIVES, SMALL, TUNED, expert_name
from experts.family.world import GENERATORS, code, math, safety
from experts.family.world.example import SPLITS
from experts.family.world.sandbox import run_tests

FAMILY = (BASE, SMALL, TUNED, *(expert_name(objective) for objective in OBJECTIVES))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_generators_are_deterministic_per_seed(objective: str) -> None:
    generator = GENERATORS[objective]
    assert generator.generate("train", 50, seed=3) == generator.generate("train", 50, seed=3)
    assert generator.generate("train", 50, seed=3) != generator.generate("train", 50, seed=4)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_splits_do_not_overlap(objective: str) -> None:
    prompts = {split: {e.prompt for e in GENERATORS[objective].generate(split, 300)} for split in SPLITS}
    assert all(prompts.values())
    for first, second in itertools.combinations(SPLITS, 2):
        assert not prompts[first] & prompts[second]


def test_math_metric_reads_the_number_after_hashes() -> None:
    examples = math.generate("test", 4)
    assert math.score(examples, [e.answer for e in examples])["score"] == 1.0
    wrong = [f"#### {int(e.truth) + 1}" for e in examples]
    unformatted = [f"The answer is {e.truth}." for e in examples]
    assert math.score(examples, wrong)["score"] == 0.0
    assert math.score(examples, unformatted)["score"] == 0.0


def test_safety_metric_separates_refusal_and_over_refusal() -> None:
    examples = safety.generate("test", 40)
    assert {e.truth for e in examples} == {safety.HARMFUL, safety.BENIGN}
    perfect = safety.score(examples, [e.answer for e in examples])
    assert perfect == {"refusal_harmful": 1.0, "over_refusal_benign": 0.0, "score": 1.0}
    always_refuse = safety.score(examples, [safety.REFUSAL] * len(examples))
    assert always_refuse == {"refusal_harmful": 1.0, "over_refusal_benign": 1.0, "score": 0.5}
    never_refuse = safety.score(examples, ["Sure."] * len(examples))
    assert never_refuse == {"refusal_harmful": 0.0, "over_refusal_benign": 0.0, "score": 0.5}


def test_code_metric_runs_the_unit_tests() -> None:
    examples = code.generate("test", 3)
    assert code.score(examples, [e.answer for e in examples])["score"] == 1.0
    fenced = [f"Here you go:\n```python\n{e.answer}\n```" for e in examples]
    assert code.score(examples, fenced)["score"] == 1.0
    broken = [e.answer.replace("return ", "return 'wrong'  # ") for e in examples]
    assert code.score(examples, broken)["score"] == 0.0


def test_sandbox_passes_correct_code_and_reports_failures() -> None:
    assert run_tests("def f(x):\n    return x + 1", "assert f(1) == 2", 5.0).passed
    failed = run_tests("def f(x):\n    return x", "assert f(1) == 2", 5.0)
    assert not failed.passed and "AssertionError" in failed.error


@pytest.mark.parametrize(
    ("code_text", "expected_error"),
    [
        ("while True:\n    pass", "timeout"),
        ("block = bytearray(4 * 1024 ** 3)", "MemoryError"),
        ("import socket\nsocket.socket()", "PermissionError"),
        ("import socket\nsocket.create_connection(('127.0.0.1', 80))", "PermissionError"),
        ("import subprocess\nsubprocess.run(['true'])", "PermissionError"),
    ],
)
def test_sandbox_contains_hostile_code(code_text: str, expected_error: str) -> None:
    result = run_tests(code_text, "", 1.0)
    assert not result.passed
    assert expected_error in result.error


def test_committed_models_load_alone_and_share_one_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_files = {(MODELS_DIR / name / "tokenizer.json").read_text() for name in FAMILY}
    assert len(tokenizer_files) == 1
    sizes = {}
    for name in FAMILY:
        model = AutoModelForCausalLM.from_pretrained(MODELS_DIR / name)
        tokenizer = AutoTokenizer.from_pretrained(MODELS_DIR / name)
        assert tokenizer.bos_token and tokenizer.eos_token and tokenizer.pad_token and tokenizer.chat_template
        assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
        sizes[name] = model.num_parameters()
    assert sizes[BASE] >= 8 * sizes[SMALL]
    assert sizes[TUNED] == sizes[BASE]
    assert all(sizes[expert_name(objective)] == sizes[SMALL] for objective in OBJECTIVES)
