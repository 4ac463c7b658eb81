"""Fixed-shape streams (the CUDA-graph path) compute exactly what growing streams do; here they run eagerly."""

import pytest
import torch

from composer import Composer, DecodingConfig
from experts.loading import ModelSpec, load
from experts.static_stream import StaticStream
from experts.stream import ModelStream
from tests.reference import reference_decode
from tests.test_engine import collect_logits, member, three_objectives

ROWS = [[2, 10, 11, 12, 13], [2, 14, 15], [2, 16, 17, 18]]  # uneven: left padding in the mask


def test_every_stream_operation_gives_the_growing_streams_logits(tiny):
    loaded = load(ModelSpec(tiny["base"], dtype="float64"))
    growing = ModelStream.of(loaded)
    fixed = StaticStream(loaded.model, loaded.tokenizer.pad_token_id, capacity=12)

    def both(call):
        a, b = call(growing), call(fixed)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-10, rtol=0)
        assert torch.equal(growing.mask, fixed.mask)

    both(lambda s: s.start(ROWS))
    for token in (20, 21):
        both(lambda s, token=token: s.extend(torch.full((3, 1), token)))
    both(lambda s: s.extend(torch.tensor([[22, 23, 24]] * 3)))
    both(lambda s: s.retract(torch.tensor([3, 1, 2]), 3))  # rows keep what they accepted, unevenly
    both(lambda s: s.extend(torch.full((3, 1), 25)))
    both(lambda s: s.crop(3))
    both(lambda s: s.select(torch.tensor([2, 0])))  # a row finished: the batch shrinks
    both(lambda s: s.extend(torch.full((2, 1), 26)))


def test_a_full_static_cache_says_so(tiny):
    loaded = load(ModelSpec(tiny["base"]))
    stream = StaticStream(loaded.model, loaded.tokenizer.pad_token_id, capacity=1)
    stream.start(ROWS)
    stream.extend(torch.full((3, 1), 20))
    with pytest.raises(RuntimeError, match="static cache full"):
        stream.extend(torch.full((3, 1), 21))


def test_composition_with_cuda_graphs_requested_matches_the_slow_reference(tiny):
    objectives = three_objectives(tiny, dtype="float64")  # chat, template and a schedule
    composer = Composer(member(tiny["base"], dtype="float64"), objectives, cuda_graphs=True)
    tokens, logits = collect_logits(composer, ["the cat sat on"], steps=8)
    ref_tokens, ref_logits = reference_decode(tiny["base"], objectives, "the cat sat on", steps=8)
    assert tokens[0].tolist() == ref_tokens
    assert torch.allclose(logits[0], torch.stack(ref_logits), atol=1e-5, rtol=0)


def test_generate_with_cuda_graphs_requested_is_unchanged(tiny):
    """Rows that stop early leave the batch (the static caches shrink), several samples per prompt."""
    prompts = ["the cat sat on", "hello", "write a function to add two numbers"]
    configs = [
        DecodingConfig(max_new_tokens=12, stop=("cat", "dog", "x")),
        DecodingConfig(max_new_tokens=9, do_sample=True, seed=3, num_return_sequences=2, top_k=20),
    ]
    reasons = []
    for config in configs:
        runs = [
            Composer(tiny["base"], three_objectives(tiny), cuda_graphs=graphs).generate(prompts, config)
            for graphs in (False, True)
        ]
        assert [(c.token_ids, c.finish_reason) for c in runs[0]] == [(c.token_ids, c.finish_reason) for c in runs[1]]
        reasons.append({c.finish_reason for c in runs[1]})
    assert reasons[0] == {"stop", "length"}  # some rows did leave the batch before the others
