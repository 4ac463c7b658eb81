"""Fuzzed prompts, weights and schedules: a one-line error or output with no NaN, never a hang or a trace."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer import (
    Composer,
    Constant,
    Cosine,
    DecodingConfig,
    Linear,
    Member,
    ModelSpec,
    Objective,
    Piecewise,
    UserInputError,
    Warmup,
)

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**40), 10**40))


@pytest.fixture(scope="module")
def composer(tiny) -> Composer:
    objectives = [
        Objective("a", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"]))),
        Objective("b", Member(ModelSpec(tiny["expert_b"])), Member(ModelSpec(tiny["anti"])), schedule=Cosine()),
    ]
    return Composer(tiny["short"], objectives)  # a 16-token context window, so long prompts are common


def no_nan_or_clear_error(run) -> None:  # noqa: ANN001
    try:
        result = run()
    except UserInputError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert result is not None


@FUZZ
@given(st.text(max_size=120))
def test_any_prompt(composer, prompt):
    def run():
        out = composer.generate([prompt], DecodingConfig(max_new_tokens=3))[0]
        assert isinstance(out.text, str)
        return out

    no_nan_or_clear_error(run)


@FUZZ
@given(st.dictionaries(st.sampled_from(["a", "b", "zzz"]), numbers, max_size=3))
def test_any_weights(composer, weights):
    def run():
        session = composer.session(["the cat"], weights=weights, max_new_tokens=2)
        probs = torch.softmax(session.start().logits, -1)
        assert not torch.isnan(probs).any()
        return probs

    no_nan_or_clear_error(run)


schedules = st.one_of(
    st.builds(Constant, numbers),
    st.builds(Linear, numbers, numbers, st.one_of(st.integers(-3, 50), st.floats())),
    st.builds(Cosine, numbers, numbers, st.integers(-3, 50)),
    st.builds(Warmup, numbers, st.one_of(st.integers(-3, 50), st.text(max_size=2))),
    st.builds(Piecewise, st.lists(st.integers(-2, 20), max_size=3), st.lists(numbers, max_size=4)),
)


@FUZZ
@given(st.data())
def test_any_schedule(tiny, data):
    def run():
        schedule = data.draw(schedules)
        Objective("s", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"])), schedule=schedule)
        values = [schedule(t) for t in range(0, 60, 7)]
        assert all(math.isfinite(v) for v in values)
        return values

    no_nan_or_clear_error(run)


def test_remote_code_never_runs_unless_the_model_entry_allows_it(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "modeling_evil.EvilConfig"}})
    )
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    with pytest.raises(UserInputError, match="could not be loaded"):
        Composer(str(folder))
    assert not marker.exists()
    assert ModelSpec(str(folder)).trust_remote_code is False
