"""Stock transformers generate() and lm-eval's HFLM on the composed model give the composed distribution."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from composer import Chat, Composer, DecodingConfig, Linear, Member, ModelSpec, Objective, UserInputError
from composer.hf_model import ComposedForCausalLM


def raw_objectives(tiny: dict) -> list[Objective]:
    return [
        Objective("a", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"]))),
        Objective("b", Member(ModelSpec(tiny["padded"])), Member(ModelSpec(tiny["anti"])), weight=-0.5),
    ]


@pytest.fixture(scope="module")
def chat_composer(tiny) -> Composer:
    objectives = [
        Objective("a", Member(ModelSpec(tiny["expert_a"]), Chat(system="be kind")), Member(ModelSpec(tiny["anti"]))),
        Objective("b", Member(ModelSpec(tiny["expert_b"])), Member(ModelSpec(tiny["anti"])), schedule=Linear(1, 0, 4)),
    ]
    return Composer(tiny["base"], objectives)


def encode(composer: Composer, prompts: list[str]) -> dict:
    composer.tokenizer.padding_side = "left"
    return composer.tokenizer(prompts, return_tensors="pt", padding=True)


def new_tokens(out: torch.Tensor, inputs: dict) -> list[list[int]]:
    return out[:, inputs["input_ids"].shape[1] :].tolist()


def test_stock_greedy_generate_equals_composer(chat_composer):
    prompts = ["the cat sat on", "hello"]
    inputs = encode(chat_composer, prompts)
    model = ComposedForCausalLM(chat_composer)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = [c.token_ids for c in chat_composer.generate(prompts, DecodingConfig(max_new_tokens=8))]
    assert new_tokens(out, inputs) == expected


def test_per_row_steering_weights(chat_composer):
    inputs = encode(chat_composer, ["the cat", "the cat"])
    model = ComposedForCausalLM(chat_composer)
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out = model.generate(
        **inputs, steering_weights=rows, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    config = DecodingConfig(max_new_tokens=6)
    expected = chat_composer.generate(["the cat"] * 2, config, weights=[{"a": 2.0, "b": 0.0}, {"a": 0.0, "b": 1.0}])
    assert new_tokens(out, inputs) == [c.token_ids for c in expected]
    as_lists = model.generate(
        **inputs, steering_weights=rows.tolist(), max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    assert torch.equal(as_lists, out)
    with pytest.raises(UserInputError, match=r"steering_weights=.*: give a \(batch, 2\) tensor or nested list"):
        model.generate(**inputs, steering_weights=[["a", "b"], ["c", "d"]], max_new_tokens=2)
    beams = {"max_new_tokens": 4, "num_beams": 2, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    as_tensor = model.generate(**inputs, steering_weights=rows, **beams)  # transformers repeats rows per beam
    assert torch.equal(model.generate(**inputs, steering_weights=rows.tolist(), **beams), as_tensor)


def test_seeded_sampling_is_reproducible(chat_composer):
    inputs = encode(chat_composer, ["the cat"])
    model = ComposedForCausalLM(chat_composer)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=5, pad_token_id=0).tolist())
    assert runs[0] == runs[1]


def test_beam_search_cached_equals_uncached(tiny):
    composer = Composer(tiny["base"], raw_objectives(tiny))
    inputs = encode(composer, ["the cat sat", "hello world please help"])
    model = ComposedForCausalLM(composer)
    common = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = model.generate(**inputs, **common)
    uncached = model.generate(**inputs, use_cache=False, **common)
    assert cached.tolist() == uncached.tolist()


def test_assisted_decoding_with_a_small_draft_keeps_greedy_tokens(chat_composer, tiny):
    inputs = encode(chat_composer, ["the cat sat on"])
    model = ComposedForCausalLM(chat_composer)
    draft = AutoModelForCausalLM.from_pretrained(tiny["expert_b"])
    common = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    assisted = model.generate(**inputs, assistant_model=draft, **common)
    assert assisted.tolist() == model.generate(**inputs, **common).tolist()


def test_uncached_forward_refuses_what_it_cannot_compose(chat_composer):
    model = ComposedForCausalLM(chat_composer)
    with pytest.raises(UserInputError, match="uncached forward"):
        model(**encode(chat_composer, ["the cat"]))
    with pytest.raises(UserInputError, match=r"steering_weights has shape \(1, 3\); give \(1, 2\)"):
        model.generate(**encode(chat_composer, ["the cat"]), steering_weights=torch.ones(1, 3), max_new_tokens=2)


def test_uncached_forward_keeps_positions_under_any_padding(tiny):
    """Right padding and extra pad columns (pad_to_multiple_of) give each real token its own logits."""
    composer = Composer(tiny["base"], raw_objectives(tiny))
    model = ComposedForCausalLM(composer)
    rows = [composer.tokenizer(p)["input_ids"] for p in ["the cat sat", "hello world please help"]]
    alone = [model(input_ids=torch.tensor([row])).logits[0] for row in rows]
    width = max(map(len, rows)) + 2
    for side in ("left", "right"):
        ids = torch.full((2, width), composer.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[b, columns], mask[b, columns] = torch.tensor(row), 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        assert logits.shape[:2] == ids.shape
        for b in range(2):
            torch.testing.assert_close(logits[b][mask[b].bool()], alone[b], atol=1e-5, rtol=1e-5)


def test_lm_eval_hflm_scores_like_the_composer(tiny):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    composer = Composer(tiny["base"], raw_objectives(tiny))
    lm = HFLM(pretrained=ComposedForCausalLM(composer), tokenizer=composer.tokenizer, batch_size=2)
    pairs = [("the cat sat", " on the mat"), ("hello world", " please help me")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = [logprob for logprob, _ in lm.loglikelihood(requests)]
    expected = composer.score([p for p, _ in pairs], [c for _, c in pairs])
    assert got == pytest.approx([s.logprob for s in expected], abs=1e-3)
    until = Instance("generate_until", {}, ("the cat", {"until": ["zzz"], "max_gen_toks": 5}), 0)
    assert isinstance(lm.generate_until([until])[0], str)


def test_labels_give_the_loss_as_transformers_does_and_saving_is_refused(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    composer = Composer(tiny["base"])
    model = ComposedForCausalLM(composer)
    inputs = encode(composer, ["the cat sat on the mat"])
    expected = AutoModelForCausalLM.from_pretrained(tiny["base"])(**inputs, labels=inputs["input_ids"]).loss
    loss = model(**inputs, labels=inputs["input_ids"], use_cache=False).loss
    assert torch.allclose(loss, expected, atol=1e-5)
    with pytest.raises(UserInputError, match="holds no weights of its own"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_a_mixture_of_experts_base_wraps_and_generates_as_the_composer(tiny, tmp_path):
    """The shell copied the MoE base's config, whose experts implementation its own class refused."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    MixtralForCausalLM(config).save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    composer = Composer(str(tmp_path / "moe"), raw_objectives(tiny)[:1])
    prompts = ["the cat sat on", "hello"]
    inputs = encode(composer, prompts)
    out = ComposedForCausalLM(composer).generate(
        **inputs, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    expected = [c.token_ids for c in composer.generate(prompts, DecodingConfig(max_new_tokens=6))]
    assert new_tokens(out, inputs) == expected


def test_assisted_decoding_crops_a_sliding_window_base(tmp_path):
    """transformers asks the cache to record its past before assisted decoding; the members' sliding layers
    were never told, and the first crop past the window raised."""
    from tests.tiny_models import build_sliding_window_family

    paths = build_sliding_window_family(tmp_path, window=4)
    spec = {name: ModelSpec(path, dtype="float64") for name, path in paths.items()}
    composer = Composer(spec["base"], [Objective("o", Member(spec["expert"]), Member(spec["anti"]), weight=0.3)])
    prompts = ["the cat sat on the mat and the cat sat on the mat and the cat sat"]
    inputs = encode(composer, prompts)
    out = ComposedForCausalLM(composer).generate(
        **inputs, max_new_tokens=12, do_sample=False, pad_token_id=0, prompt_lookup_num_tokens=3,
        eos_token_id=composer.tokenizer.eos_token_id,
    )  # fmt: skip
    expected = [c.token_ids for c in composer.generate(prompts, DecodingConfig(max_new_tokens=12))]
    assert new_tokens(out, inputs) == expected
