"""Property tests of the combine step: invariances of the composed distribution, and no NaN ever."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from composer.combine import combine

VOCAB = 7


@st.composite
def logits_problem(draw, allow_masks: bool = False):
    k = draw(st.integers(0, 3))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.floats(0.1, 50.0))
    base = torch.randn(batch, VOCAB, generator=gen, dtype=torch.float64) * scale
    experts = torch.randn(k, batch, VOCAB, generator=gen, dtype=torch.float64) * scale
    antis = torch.randn(k, batch, VOCAB, generator=gen, dtype=torch.float64) * scale
    weights = torch.tensor(
        draw(st.lists(st.floats(-5, 5), min_size=k * batch, max_size=k * batch)), dtype=torch.float64
    )
    if allow_masks:
        for tensor in (base, experts, antis):
            mask = torch.rand(tensor.shape, generator=gen) < draw(st.floats(0.0, 1.0))
            tensor.masked_fill_(mask, float("-inf"))
    return base, experts, antis, weights.reshape(k, batch)


@settings(max_examples=200, deadline=None)
@given(logits_problem(), st.integers(0, 6), st.floats(-1e3, 1e3))
def test_per_row_constant_on_any_model_leaves_the_distribution(problem, which, constant):
    base, experts, antis, weights = problem
    models = [base, *experts, *antis]
    which = which % len(models)
    shift = torch.linspace(-1, 1, base.shape[0], dtype=torch.float64).unsqueeze(-1) * constant
    shifted = [m + shift if i == which else m for i, m in enumerate(models)]
    k = experts.shape[0]
    stack = lambda ms: torch.stack(ms) if ms else base.new_empty(0, *base.shape)  # noqa: E731
    moved = combine(shifted[0], stack(shifted[1 : 1 + k]), stack(shifted[1 + k :]), weights)
    original = combine(base, experts, antis, weights)
    assert torch.allclose(torch.softmax(moved, -1), torch.softmax(original, -1), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(logits_problem(allow_masks=True))
def test_zero_weights_give_the_base(problem):
    base, experts, antis, weights = problem
    assert torch.equal(combine(base, experts, antis, torch.zeros_like(weights)), base)


@settings(max_examples=300, deadline=None)
@given(logits_problem(allow_masks=True))
def test_never_nan(problem):
    base, experts, antis, weights = problem
    composed = combine(base, experts, antis, weights)
    assert not torch.isnan(composed).any()
    rows_with_support = torch.isfinite(base).any(-1)
    assert not torch.isnan(torch.softmax(composed[rows_with_support], -1)).any()


def test_masked_tokens_stay_masked():
    base = torch.tensor([[0.0, 1.0, float("-inf")]])
    expert = torch.tensor([[[float("-inf"), 2.0, 0.0]]])
    anti = torch.tensor([[[float("-inf"), 0.0, 0.0]]])
    composed = combine(base, expert, anti, torch.tensor([[1.0]]))
    assert composed.tolist() == [[float("-inf"), 3.0, float("-inf")]]
