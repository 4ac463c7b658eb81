"""Same-architecture experts and anti-experts run as one stacked forward, with exactly their own outputs."""

import gc
import weakref
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

import composer.units
from composer import Chat, Composer, DecodingConfig, Draft, Member, ModelSpec, Objective, Template
from experts.loading import load
from experts.stacking import StackedLeaf, _stacked_leaf, stacked
from experts.stream import left_pad, positions_from_mask
from tests.tiny_models import build_tokenizer


def member(path: str, fmt=None, dtype: str = "float32") -> Member:
    return Member(ModelSpec(path, dtype=dtype), fmt) if fmt else Member(ModelSpec(path, dtype=dtype))


def full_logits(model: torch.nn.Module, rows: list[list[int]]) -> torch.Tensor:
    ids, mask = left_pad(rows, 0, torch.device("cpu"))
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits


def test_stacked_forward_is_each_member_alone(tiny):
    members = [load(ModelSpec(tiny[name], dtype="float64")) for name in ["expert_a", "expert_b", "anti_b"]]
    rows = [[7, 8, 9, 10], [11, 12], [13]]
    alone = torch.cat([full_logits(m.model, rows) for m in members])
    together = full_logits(stacked(members), rows * len(members))
    assert torch.allclose(together, alone, atol=1e-12, rtol=0)


def test_members_keep_their_weights_in_the_stack_once(tiny):
    members = [load(ModelSpec(tiny[name], dtype="float64")) for name in ["expert_b", "expert_c"]]
    shell = stacked(members)
    stacks = {p.untyped_storage().data_ptr() for p in shell.parameters()}
    for loaded in members:
        for param in loaded.model.parameters():
            assert param.untyped_storage().data_ptr() in stacks
    assert sum(p.numel() for p in shell.parameters()) == sum(p.numel() for m in members for p in m.model.parameters())


def test_tied_embeddings_are_stacked_once(tmp_path: Path):
    tokenizer = build_tokenizer()
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, tie_word_embeddings=True,
        )  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(tmp_path / f"tied{seed}")
        tokenizer.save_pretrained(tmp_path / f"tied{seed}")
        paths.append(str(tmp_path / f"tied{seed}"))
    members = [load(ModelSpec(p, dtype="float64")) for p in paths]
    rows = [[3, 4, 5]]
    alone = torch.cat([full_logits(m.model, rows) for m in members])
    shell = stacked(members)
    assert shell.lm_head.weight.data_ptr() == shell.model.embed_tokens.weight.data_ptr()
    assert torch.allclose(full_logits(shell, rows * 2), alone, atol=1e-12, rtol=0)


def objectives(tiny: dict, dtype: str) -> list[Objective]:
    """Members with different numbers of formats, so the stack pads some members' shares."""
    return [
        Objective("a", member(tiny["expert_a"], Chat(system="one"), dtype), member(tiny["anti"], None, dtype)),
        Objective("b", member(tiny["expert_a"], Chat(system="two"), dtype), member(tiny["anti"], None, dtype)),
        Objective(
            "c",
            member(tiny["expert_b"], Template("question {prompt} answer"), dtype),
            member(tiny["anti_b"], None, dtype),
        ),
    ]


def test_units_stack_the_small_models_and_leave_the_base_alone(tiny):
    steered = Composer(tiny["base"], objectives(tiny, "float32"))
    session = steered.session(["the cat"])
    groups = sorted(sorted(unit.groups) for unit in session.units)
    assert groups == [[0], [1, 2, 3, 4]]  # base; expert_a, anti, expert_b, anti_b
    assert "2 forward(s) per step" in steered.explain()
    unstacked = Composer(tiny["base"], objectives(tiny, "float32"), stack_models=False)
    assert len(unstacked.session(["the cat"]).units) == 5
    odd = Composer(tiny["base"], [Objective("p", member(tiny["padded"]), member(tiny["anti"]))])
    assert len(odd.session(["the cat"]).units) == 3  # a different vocabulary is a different architecture


@pytest.mark.parametrize(
    "config",
    [
        DecodingConfig(max_new_tokens=8),
        DecodingConfig(max_new_tokens=8, do_sample=True, seed=3, num_return_sequences=3, top_k=5),
    ],
)
def test_stacked_composition_equals_unstacked(tiny, config):
    prompts = ["the cat sat on", "hello world please help me write code", "yes"]
    outs = [
        Composer(member(tiny["base"], dtype="float64"), objectives(tiny, "float64"), stack_models=stack).generate(
            prompts, config, trace=True
        )
        for stack in (True, False)
    ]
    for a, b in zip(*outs, strict=True):
        assert a.token_ids == b.token_ids
        for ta, tb in zip(a.trace, b.trace, strict=True):
            assert ta.contributions == pytest.approx(tb.contributions, abs=1e-9)


def test_stacked_speculative_greedy_equals_plain_greedy(tiny):
    steered = Composer(tiny["base"], objectives(tiny, "float32"))
    config = DecodingConfig(max_new_tokens=12)
    prompts = ["the cat sat on", "hello world"]
    plain = steered.generate(prompts, config)
    fast = steered.generate(prompts, config, draft=Draft(model=member(tiny["anti"]), gamma=3))
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]


def test_an_architecture_that_cannot_be_stacked_runs_member_by_member(tiny, monkeypatch):
    def refuse(models):
        raise ValueError("parameters outside a leaf module")

    monkeypatch.setattr(composer.units, "stacked", refuse)
    prompts = ["the cat sat on"]
    fallback = Composer(tiny["base"], objectives(tiny, "float32"))
    assert len(fallback.session(prompts).units) == 5
    reference = Composer(tiny["base"], objectives(tiny, "float32"), stack_models=False)
    config = DecodingConfig(max_new_tokens=6)
    assert fallback.generate(prompts, config)[0].token_ids == reference.generate(prompts, config)[0].token_ids


def test_a_leaf_taking_more_than_the_hidden_states_keeps_its_members_alone(tmp_path: Path):
    """OPT's learned positions take the mask and the cache's length: stacked, its first forward raised."""
    tokenizer = build_tokenizer()
    specs = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        config = OPTConfig(
            vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
            word_embed_proj_dim=16, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        OPTForCausalLM(config).save_pretrained(tmp_path / f"opt{seed}")
        tokenizer.save_pretrained(tmp_path / f"opt{seed}")
        specs.append(ModelSpec(str(tmp_path / f"opt{seed}"), dtype="float64"))
    with pytest.raises(ValueError, match="takes more than the hidden states"):
        stacked([load(spec) for spec in specs[1:]])
    objective = Objective("o", Member(specs[1]), Member(specs[2]), weight=0.7)
    prompts, config = ["the cat sat on", "a dog"], DecodingConfig(max_new_tokens=5)
    together = Composer(specs[0], [objective]).generate(prompts, config)
    alone = Composer(specs[0], [objective], stack_models=False).generate(prompts, config)
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


class OnePlusWeightNorm(torch.nn.Module):
    """Gemma's RMSNorm scales by (1 + weight): stacking must not treat it as a plain scale."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight)


@pytest.mark.parametrize("make", [lambda: OnePlusWeightNorm(6), lambda: torch.nn.LayerNorm(6)])
def test_leaves_of_other_forms_run_as_each_member(make):
    torch.manual_seed(0)
    members = [make(), make()]
    for m in members:
        with torch.no_grad():
            m.weight.normal_()
    weights = {n: torch.stack([m.get_parameter(n).detach() for m in members]) for n, _ in members[0].named_parameters()}
    leaf = _stacked_leaf(members[0], weights, members)
    assert isinstance(leaf, StackedLeaf)
    x = torch.randn(4, 3, 6)
    assert torch.equal(leaf(x), torch.cat([members[0](x[:2]), members[1](x[2:])]))


def test_a_model_drafting_by_itself_leaves_its_stack(tiny):
    steered = Composer(tiny["base"], objectives(tiny, "float32"))
    draft = Draft(model=member(tiny["anti"]), steer=False, gamma=3)
    session, _ = steered._session(["the cat"], None, 8, draft)
    anti = draft.slot(steered.plan).group
    assert [anti] in [unit.groups for unit in session.units]
    assert len(session.units) == 3  # base; anti (drafts alone); expert_a, expert_b, anti_b stacked
    config = DecodingConfig(max_new_tokens=12)
    prompts = ["the cat sat on", "hello world"]
    fast = steered.generate(prompts, config, draft=draft)
    assert [c.token_ids for c in fast] == [c.token_ids for c in steered.generate(prompts, config)]


def owns_its_weights(loaded) -> bool:
    return all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in loaded.model.parameters())


def test_a_stack_nobody_holds_is_freed_and_its_members_take_their_weights_back(tiny):
    """Member sets that share models (a sweep dropping one objective at a time): each stack frees its copy
    when let go, the others keep giving exactly their members' logits."""
    names = ["expert_a", "expert_c", "anti_b"]
    members = [load(ModelSpec(tiny[name], dtype="float64")) for name in names]
    rows = [[7, 8, 9, 10], [11, 12]]
    alone = [full_logits(m.model, rows) for m in members]
    all_three, first_two = stacked(members), stacked(members[:2])
    assert stacked(members) is all_three  # shared while held
    freed = weakref.ref(first_two)
    del first_two
    gc.collect()
    assert freed() is None
    assert torch.allclose(full_logits(all_three, rows * 3), torch.cat(alone), atol=1e-12, rtol=0)
    assert not owns_its_weights(members[2])  # still a view into the stack that holds it
    del all_three
    gc.collect()
    assert all(owns_its_weights(m) for m in members)
    for loaded, expected in zip(members, alone, strict=True):
        assert torch.equal(full_logits(loaded.model, rows), expected)


def test_a_composer_keeps_its_stack_across_sessions_and_lets_it_go_with_itself(tiny):
    steered = Composer(member(tiny["base"], dtype="float64"), objectives(tiny, "float64"))

    def stack_of(session):
        return next(unit.stream.model for unit in session.units if len(unit.groups) > 1)

    held = weakref.ref(stack_of(steered.session(["the cat"])))
    gc.collect()
    assert stack_of(steered.session(["a dog"])) is held()  # not stacked again for the next batch
    del steered
    gc.collect()
    assert held() is None


class ScaledLinear(torch.nn.Module):
    """What PEFT does to a tuned model: a layer wrapped after construction (here, its output doubled)."""

    def __init__(self, inner: torch.nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


@pytest.mark.parametrize("alter", ["hook", "wrapped layer", "patched forward"])
def test_a_member_altered_after_construction_is_not_stacked(tiny, alter):
    """The stack is rebuilt from a config: a hook, an injected module or a forward replaced on the instance (as
    accelerate's hooks do) would silently drop out of its forward."""
    from experts.loading import register

    loaded = load(ModelSpec(tiny["expert_a"]))
    model = LlamaForCausalLM.from_pretrained(tiny["expert_a"]).eval()
    if alter == "hook":
        model.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([3]), -1e4))
    elif alter == "wrapped layer":
        model.model.layers[0].mlp.down_proj = ScaledLinear(model.model.layers[0].mlp.down_proj)
    else:
        head = model.lm_head
        head.forward = lambda x: torch.nn.functional.linear(x, head.weight).index_fill(-1, torch.tensor([3]), -1e4)
    spec = register(f"altered-{alter}", model, loaded.tokenizer)
    anti = member(tiny["anti"])
    pairs = [Objective("a", Member(spec), anti), Objective("b", member(tiny["expert_b"]), anti)]
    stacked = Composer(tiny["base"], pairs)
    assert sorted(sorted(unit.groups) for unit in stacked.session(["the cat"]).units) == [[0], [1], [2, 3]]
    alone = Composer(tiny["base"], pairs, stack_models=False)
    config = DecodingConfig(max_new_tokens=6)
    got, expected = (c.generate(["the cat sat"], config, trace=True)[0] for c in (stacked, alone))
    assert got.token_ids == expected.token_ids
    assert got.trace[0].contributions == pytest.approx(expected.trace[0].contributions, abs=1e-5)
