"""The composed distribution is exactly the formula: against the slow reference, the base, and the paper."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from composer import Chat, Composer, DecodingConfig, Linear, Member, ModelSpec, Objective, Template, Warmup
from tests.reference import reference_decode


def member(path: str, fmt=None, dtype: str = "float32") -> Member:
    return Member(ModelSpec(path, dtype=dtype), fmt) if fmt else Member(ModelSpec(path, dtype=dtype))


def three_objectives(tiny: dict, dtype: str = "float32") -> list[Objective]:
    return [
        Objective("safety", member(tiny["expert_a"], Chat(system="be safe"), dtype), member(tiny["anti"], None, dtype)),
        Objective("code", member(tiny["expert_b"], None, dtype), member(tiny["anti"], None, dtype), weight=0.7),
        Objective(
            "truth",
            member(tiny["expert_c"], Template("question {prompt} answer"), dtype),
            member(tiny["anti_b"], None, dtype),
            weight=-0.4,
            schedule=Linear(start=1.0, end=0.0, steps=5),
        ),
    ]


def collect_logits(composer: Composer, prompts: list[str], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decode through the session primitive; returns tokens (B, steps) and logits (B, steps, V)."""
    session = composer.session(prompts, max_new_tokens=steps)
    composed = session.start()
    tokens, logits = [], []
    for _ in range(steps):
        logits.append(composed.logits[:, -1])
        tokens.append(composed.logits[:, -1].argmax(-1))
        composed = session.extend(tokens[-1].unsqueeze(1))
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("prompt", ["the cat sat on", "hello world please help me write code"])
def test_matches_slow_reference_in_float64(tiny, prompt):
    objectives = three_objectives(tiny, dtype="float64")
    composer = Composer(member(tiny["base"], dtype="float64"), objectives)
    tokens, logits = collect_logits(composer, [prompt], steps=8)
    ref_tokens, ref_logits = reference_decode(tiny["base"], objectives, prompt, steps=8)
    assert tokens[0].tolist() == ref_tokens
    assert torch.allclose(logits[0], torch.stack(ref_logits), atol=1e-5, rtol=0)


def test_float32_greedy_tokens_match_reference(tiny):
    objectives = three_objectives(tiny)
    composer = Composer(tiny["base"], objectives)
    out = composer.generate(["the dog ran to"], DecodingConfig(max_new_tokens=10))
    ref_tokens, _ = reference_decode(tiny["base"], objectives, "the dog ran to", steps=10)
    assert out[0].token_ids == ref_tokens[: len(out[0].token_ids)]


def base_generate(path: str, prompt: str, n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_no_objectives_is_the_base_generate(tiny):
    out = Composer(tiny["base"]).generate("the cat sat on", DecodingConfig(max_new_tokens=12))
    assert out[0].token_ids == base_generate(tiny["base"], "the cat sat on", 12)[: len(out[0].token_ids)]


def test_zero_weights_are_the_base_generate(tiny):
    composer = Composer(tiny["base"], three_objectives(tiny))
    zero = {"safety": 0.0, "code": 0.0, "truth": 0.0}
    out = composer.generate("the cat sat on", DecodingConfig(max_new_tokens=12), weights=zero)
    assert out[0].token_ids == base_generate(tiny["base"], "the cat sat on", 12)[: len(out[0].token_ids)]


def test_one_pair_is_the_papers_formula(tiny):
    """Proxy-tuning (Liu et al. 2024): base + (expert - anti), expert logits sliced to the base's vocabulary."""
    composer = Composer(
        member(tiny["base"], dtype="float64"),
        [Objective("tuned", member(tiny["padded"], dtype="float64"), member(tiny["anti"], dtype="float64"))],
    )
    _, logits = collect_logits(composer, ["the cat"], steps=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    ids = tokenizer("the cat", return_tensors="pt")["input_ids"]
    run = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float64)(ids).logits[0, -1]  # noqa: E731
    base = run(tiny["base"])
    paper = base + (run(tiny["padded"])[: base.shape[0]] - run(tiny["anti"]))
    assert torch.allclose(logits[0, 0], paper, atol=1e-10)


def test_batch_invariance_of_greedy_output(tiny):
    composer = Composer(tiny["base"], three_objectives(tiny))
    prompts = ["the cat", "hello world please help me write a function to add two numbers", "x", "if x return y"]
    config = DecodingConfig(max_new_tokens=10)
    batched = composer.generate(prompts, config)
    for prompt, together in zip(prompts, batched, strict=True):
        alone = composer.generate([prompt], config)[0]
        assert alone.token_ids == together.token_ids


def test_per_row_weights_equal_separate_runs(tiny):
    composer = Composer(tiny["base"], three_objectives(tiny))
    rows = [{"safety": 2.0}, {"code": 0.0, "truth": 1.5}]
    config = DecodingConfig(max_new_tokens=8)
    together = composer.generate(["the cat", "the cat"], config, weights=rows)
    for row, result in zip(rows, together, strict=True):
        assert composer.generate(["the cat"], config, weights=row)[0].token_ids == result.token_ids
        assert result.weights == {**{"safety": 1.0, "code": 0.7, "truth": -0.4}, **row}


def test_schedule_is_applied_per_generated_token(tiny):
    objectives = [Objective("s", member(tiny["expert_a"]), member(tiny["anti"]), weight=2.0, schedule=Warmup(1.0, 4))]
    composer = Composer(tiny["base"], objectives)
    session = composer.session(["the cat"], max_new_tokens=6)
    weights = [session.start().weights[0, 0, 0].item()]
    for _ in range(5):
        weights.append(session.extend(torch.tensor([[5]])).weights[0, 0, 0].item())
    assert weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_shared_anti_expert_and_prompted_experts_are_deduplicated(tiny):
    objectives = [
        Objective("a", member(tiny["expert_a"], Chat(system="one")), member(tiny["anti"])),
        Objective("b", member(tiny["expert_a"], Chat(system="two")), member(tiny["anti"])),
        Objective("c", member(tiny["expert_b"]), member(tiny["anti"])),
    ]
    composer = Composer(tiny["base"], objectives)
    assert len(composer.models) == 4  # base, expert_a (two formats in one batch), expert_b, anti once
    assert composer.plan.stream_count == 5
    assert "2 forward(s) per step (naive: 7)" in composer.explain()  # the small models stacked into one
    tokens, _ = collect_logits(composer, ["the cat"], steps=6)
    ref, _ = reference_decode(tiny["base"], objectives, "the cat", steps=6)
    assert tokens[0].tolist() == ref


def test_padded_vocabulary_is_sliced_to_the_base(tiny):
    composer = Composer(tiny["base"], [Objective("p", member(tiny["padded"]), member(tiny["anti"]))])
    assert composer.vocab_width == len(AutoTokenizer.from_pretrained(tiny["base"]))
    assert composer.generate("the cat", DecodingConfig(max_new_tokens=4))[0].token_ids


def test_scoring_equals_teacher_forced_decoding(tiny):
    composer = Composer(tiny["base"], three_objectives(tiny))
    prompts, continuations = ["the cat", "hello world please"], ["sat on the mat", "help"]
    scores = composer.score(prompts, continuations)
    for prompt, continuation, score in zip(prompts, continuations, scores, strict=True):
        target = composer.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        session = composer.session([prompt])
        composed, total = session.start(), 0.0
        for token in target:
            total += torch.log_softmax(composed.logits[0, -1], -1)[token].item()
            composed = session.extend(torch.tensor([[token]]))
        assert score.logprob == pytest.approx(total, abs=1e-4)


def test_trace_explains_each_token(tiny):
    composer = Composer(tiny["base"], three_objectives(tiny))
    out = composer.generate("the cat", DecodingConfig(max_new_tokens=5), trace=True)[0]
    assert len(out.trace) == len(out.token_ids)
    first = out.trace[0]
    assert set(first.contributions) == {"safety", "code", "truth"}
    assert first.token_id == out.token_ids[0] and first.composed_rank == 0
    assert first.flipped_top1 == (first.base_rank != 0)


def test_a_trace_shows_each_token_as_it_reads():
    """Byte-level BPE pieces ('Ġthe') come with their text (' the'), which joins into the completion."""
    from experts.family import BASE, MODELS_DIR

    composer = Composer(str(MODELS_DIR / BASE))
    out = composer.generate("Question: what is 2 + 3?\nAnswer:", DecodingConfig(max_new_tokens=8), trace=True)[0]
    assert any(t.token.startswith("Ġ") for t in out.trace)
    assert "".join(t.text for t in out.trace).startswith(out.text)


def test_a_session_keeps_its_prompts_in_step_with_select(tiny):
    """After select, a fresh start (or scoring over the rows) sees the selected prompts, in their new order."""
    two_formats = [  # expert_a's group holds two prompt formats: its rows are format-major
        Objective("chat", member(tiny["expert_a"], Chat(), "float32"), member(tiny["anti"], None, "float32")),
        Objective("qa", member(tiny["expert_a"], Template("q {prompt} a"), "float32"), member(tiny["anti"], None)),
    ]
    composer = Composer(tiny["base"], two_formats)
    session = composer.session(["the cat sat", "hello world", "a dog ran to"])
    session.start()
    session.select(torch.tensor([2, 1, 0]))
    session.select(torch.tensor([0, 2]))
    expected = composer.session(["a dog ran to", "the cat sat"]).start().logits
    torch.testing.assert_close(session.start().logits, expected)
