"""torch.compile'd decoding steps give the eager loop's tokens, plain and speculative, and fall back when it fails."""

import gc
import warnings
import weakref

import pytest
import torch
from torch._dynamo.exc import TorchDynamoException

from composer import Composer, DecodingConfig, UserInputError
from composer.speculative import Draft
from experts import compiled
from experts.compiled import CompiledStep
from tests.test_speculative import objectives

PROMPTS = ["the cat sat on", "hello world please help me write a function", "x"]


def test_compiled_steps_give_the_eager_tokens_plain_and_speculative(tiny, monkeypatch):
    compiled_calls = [0]
    call = CompiledStep.__call__

    def counted(self, **inputs):
        logits = call(self, **inputs)
        compiled_calls[0] += logits is not None
        return logits

    monkeypatch.setattr(CompiledStep, "__call__", counted)
    config = DecodingConfig(max_new_tokens=10)
    eager = Composer(tiny["base"], objectives(tiny)).generate(PROMPTS, config, trace=True)
    composer = Composer(tiny["base"], objectives(tiny), compile=True)
    plain = composer.generate(PROMPTS, config, trace=True)
    assert compiled_calls[0] >= 2 * 9  # the base and the stack of small models, at every step after the first
    assert [c.token_ids for c in plain] == [c.token_ids for c in eager]
    for c, e in zip(plain, eager, strict=True):  # pytest.approx compares flat lists, not lists of dicts
        contributions = [[v for t in x.trace for v in t.contributions.values()] for x in (c, e)]
        assert contributions[0] == pytest.approx(contributions[1], rel=1e-4, abs=1e-4)
    fast = composer.generate(PROMPTS, config, draft=Draft(gamma=3))
    assert [c.token_ids for c in fast] == [c.token_ids for c in eager]
    stack = weakref.ref(next(unit.stream.model for unit in composer.session(["x"]).units if len(unit.groups) > 1))
    del composer
    gc.collect()
    assert stack() is None  # the compiled graphs do not keep a sweep's stacks alive


def test_a_failed_compilation_warns_once_and_decodes_eagerly(tiny, monkeypatch):
    def no_compiler(model, **options):
        def step(**inputs):
            raise TorchDynamoException("no C++ compiler found\nsecond line")

        return step

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(compiled, "_FAILED", weakref.WeakSet())  # the models it marks stay compilable for others
    config = DecodingConfig(max_new_tokens=6)
    eager = Composer(tiny["base"], objectives(tiny)).generate(PROMPTS, config)
    composer = Composer(tiny["base"], objectives(tiny), compile=True)
    with pytest.warns(UserWarning, match=r"decoding eagerly: torch.compile failed \(no C\+\+ compiler found\)$"):
        failed = composer.generate(PROMPTS, config)
    assert [c.token_ids for c in failed] == [c.token_ids for c in eager]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model: the next batch neither warns nor tries again
        assert [c.token_ids for c in composer.generate(PROMPTS, config)] == [c.token_ids for c in eager]


def test_cuda_graphs_and_compile_are_refused_together(tiny):
    with pytest.raises(UserInputError, match="choose one"):
        Composer(tiny["base"], compile=True, cuda_graphs=True)
