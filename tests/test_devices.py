"""Models already in memory, host-to-device copies and CUDA lanes: what of them runs without a GPU."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from composer import Composer, DecodingConfig, Member, ModelSpec, Objective, UserInputError
from composer.lanes import Lanes
from experts.devices import to_device
from experts.loading import load, register


def test_a_registered_model_composes_as_its_folder_does(tiny):
    in_memory = {
        name: register(
            f"test-{name}", AutoModelForCausalLM.from_pretrained(tiny[name]), AutoTokenizer.from_pretrained(tiny[name])
        )
        for name in ("base", "expert_a", "anti")
    }

    def generate(specs: dict[str, ModelSpec]) -> list[int]:
        objective = Objective("a", Member(specs["expert_a"]), Member(specs["anti"]), weight=0.8)
        return Composer(specs["base"], [objective]).generate(["the cat"], DecodingConfig(max_new_tokens=8))[0].token_ids

    assert generate(in_memory) == generate({name: ModelSpec(tiny[name]) for name in in_memory})


def test_registering_another_model_under_a_taken_name_is_refused(tiny):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny["anti"]), AutoTokenizer.from_pretrained(tiny["anti"])
    register("test-taken", model, tokenizer)
    assert register("test-taken", model, tokenizer).path == "memory:test-taken"  # the same model again is fine
    other = AutoModelForCausalLM.from_pretrained(tiny["anti"])
    with pytest.raises(UserInputError, match="already registered as 'test-taken'"):
        register("test-taken", other, tokenizer)
    with pytest.raises(UserInputError, match="never registered"):
        Composer(ModelSpec("memory:test-nobody"))
    with pytest.raises(UserInputError, match="takes a transformers causal LM and its tokenizer, not .* and NoneType"):
        register("test-untokenized", model, None)


def test_a_registered_model_carries_its_own_dtype(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["anti"], dtype=torch.bfloat16)
    assert register("test-bf16", model, AutoTokenizer.from_pretrained(tiny["anti"])).dtype == "bfloat16"


def test_a_device_that_is_not_one_or_not_here_is_refused(tiny):
    with pytest.raises(UserInputError, match="'gpu' is not a device; use cpu, cuda, cuda:1 or mps"):
        ModelSpec(tiny["anti"], device="gpu")
    with pytest.raises(UserInputError, match=r"device 'cuda:99' is not on this machine \(\d+ cuda device"):
        Composer(ModelSpec(tiny["anti"], device="cuda:99"))
    with pytest.raises(UserInputError, match="device 'cuda:99' is not on this machine"):
        Composer(ModelSpec(tiny["anti"], device_map="cuda:99"))
    assert ModelSpec(tiny["anti"], device_map="auto").placement is None


def test_a_per_module_device_map_loads_once_and_composes(tiny):
    """transformers' per-module form ({module: device}) made specs unhashable: loading failed with a TypeError."""
    spec = ModelSpec(tiny["base"], device_map={"": "cpu"})
    assert spec == ModelSpec(tiny["base"], device_map={"": "cpu"}) and spec.placement is None
    objective = Objective("a", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"])))
    mapped = Composer(spec, [objective]).generate(["the cat"], DecodingConfig(max_new_tokens=6))[0].token_ids
    plain = Composer(tiny["base"], [objective]).generate(["the cat"], DecodingConfig(max_new_tokens=6))[0].token_ids
    assert mapped == plain
    for bad, message in [
        ({"": "gpu"}, r"device_map\[''\]='gpu' is not a device"),
        ({}, "device_map is an empty mapping"),
        ([("", "cpu")], "device_map must be a strategy .* not list"),
        ({1: "cpu"}, "device_map must map module names to devices"),
    ]:
        with pytest.raises(UserInputError, match=message):
            ModelSpec(tiny["base"], device_map=bad)


def test_one_device_spelt_two_ways_is_one_spec_and_one_load(tiny):
    """A spec is the key of the loaded copies: 'cpu' and torch.device('cpu') once loaded the weights twice."""
    assert ModelSpec(tiny["anti"], device=torch.device("cpu")) == ModelSpec(tiny["anti"], device="cpu")
    assert ModelSpec(tiny["anti"], device_map=torch.device("cpu")).device_map == "cpu"
    mapped = ModelSpec(tiny["anti"], device_map={"lm_head": torch.device("cpu"), "model": "cpu"})
    assert mapped == ModelSpec(tiny["anti"], device_map={"model": "cpu", "lm_head": "cpu"})
    assert load(ModelSpec(tiny["anti"], device=torch.device("cpu"))) is load(ModelSpec(tiny["anti"], device="cpu"))


@pytest.mark.skipif(torch.accelerator.current_accelerator() is not None, reason="needs a machine without one")
@pytest.mark.parametrize("where", [{"device": 0}, {"device_map": 0}, {"device_map": {"model": "cpu", "lm_head": 0}}])
def test_an_accelerator_index_without_an_accelerator_is_refused_in_one_line(tiny, where):
    with pytest.raises(UserInputError, match="device 0 names an accelerator and this machine has none; use cpu"):
        Composer(ModelSpec(tiny["anti"], **where))


def test_to_device_converts_on_the_host():
    values = torch.tensor([1.5, -2.25], dtype=torch.float64)
    out = to_device(values, torch.device("cpu"), torch.float32)
    assert out.dtype == torch.float32 and out.tolist() == [1.5, -2.25]


def test_lanes_off_cuda_run_each_call_in_order():
    order: list[int] = []

    def call(unit: int) -> dict[int, torch.Tensor]:
        order.append(unit)
        return {unit * 10: torch.tensor([unit])}

    lanes = Lanes([torch.device("cpu")] * 3)
    assert lanes.streams == [None, None, None]
    out = lanes.run({2: lambda: call(2), 0: lambda: call(0)})
    assert order == [2, 0] and sorted(out) == [0, 20]


def test_the_accelerator_without_an_index_is_its_current_device(tiny, monkeypatch):
    """'cuda' and 'cuda:0' were two specs, so a recipe spelling both loaded a 7B expert twice on one GPU."""
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 1)
    assert ModelSpec(tiny["anti"], device="cuda") == ModelSpec(tiny["anti"], device="cuda:1")
    assert ModelSpec(tiny["anti"], device=torch.device("cuda")).device == "cuda:1"
    assert ModelSpec(tiny["anti"], device_map="cuda").device_map == "cuda:1"
    assert ModelSpec(tiny["anti"], device="cuda:0").device == "cuda:0"
    assert ModelSpec(tiny["anti"], device="cpu").device == "cpu"
