"""Decoding features: sampling, seeds, several samples, stop strings, EOS, penalties, streaming."""

import copy
import functools
import warnings
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from composer import Composer, DecodingConfig, Draft, Member, ModelSpec, Objective


def steered(tiny: dict) -> Composer:
    objectives = [Objective("s", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"])))]
    return Composer(tiny["base"], objectives)


def test_seeded_sampling_repeats_and_samples_differ(tiny):
    composer = steered(tiny)
    config = DecodingConfig(max_new_tokens=12, do_sample=True, temperature=1.5, seed=7, num_return_sequences=4)
    first = composer.generate(["the cat", "hello"], config)
    again = composer.generate(["the cat", "hello"], config)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.prompt for c in first] == ["the cat"] * 4 + ["hello"] * 4
    assert len({tuple(c.token_ids) for c in first[:4]}) > 1


def test_top_k_one_sampling_is_greedy(tiny):
    composer = steered(tiny)
    greedy = composer.generate("the cat", DecodingConfig(max_new_tokens=10))
    sampled = composer.generate("the cat", DecodingConfig(max_new_tokens=10, do_sample=True, top_k=1, seed=3))
    assert greedy[0].token_ids == sampled[0].token_ids


def test_repetition_penalty_matches_transformers(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    ids = tokenizer("the cat sat", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny["base"])
    hf = base.generate(**ids, max_new_tokens=10, do_sample=False, repetition_penalty=1.8, eos_token_id=None)
    ours = Composer(tiny["base"]).generate("the cat sat", DecodingConfig(max_new_tokens=10, repetition_penalty=1.8))
    assert ours[0].token_ids == hf[0, ids["input_ids"].shape[1] :].tolist()[: len(ours[0].token_ids)]


def test_stop_strings_cut_the_text_and_rows_finish_separately(tiny):
    composer = steered(tiny)
    free = composer.generate(["the cat", "hello"], DecodingConfig(max_new_tokens=12))
    words = free[0].text.split()
    stop = words[3]
    stopped = composer.generate(["the cat", "hello"], DecodingConfig(max_new_tokens=12, stop=(stop,)))
    assert stopped[0].finish_reason == "stop"
    assert stop not in stopped[0].text and free[0].text.startswith(stopped[0].text)
    assert len(stopped[0].token_ids) <= 4
    if stop not in free[1].text:
        assert stopped[1].token_ids == free[1].token_ids


def test_a_stop_string_may_be_a_special_token(tiny):
    """As with transformers' stop strings, a special token (say <|im_end|>) stops a row; it is not shown."""
    composer = steered(tiny)
    tokens = composer.generate("the cat", DecodingConfig(max_new_tokens=8))[0].token_ids
    composer.tokenizer = copy.deepcopy(composer.tokenizer)
    word = composer.tokenizer.convert_ids_to_tokens(tokens[2])
    composer.tokenizer.add_special_tokens({"additional_special_tokens": [word]})
    assert composer.tokenizer.convert_tokens_to_ids(word) == tokens[2]
    config = DecodingConfig(max_new_tokens=8, stop=(word,))
    out = composer.generate("the cat", config)[0]
    assert out.finish_reason == "stop" and out.token_ids == tokens[: len(out.token_ids)]
    assert word not in out.text.split() and tokens[len(out.token_ids) - 1] == tokens[2]
    assert "".join(composer.stream("the cat", config)) == out.text
    before = composer.tokenizer.convert_ids_to_tokens(tokens[1])
    spanning = composer.generate("the cat", DecodingConfig(max_new_tokens=8, stop=(f"{before} {word}",)))[0]
    assert spanning.token_ids == tokens[:3] and spanning.text == composer.tokenizer.decode(tokens[:1], True)


def test_eos_ends_a_row(tiny):
    composer = steered(tiny)
    config = DecodingConfig(max_new_tokens=6)
    tokens = composer.generate("the cat", config)[0].token_ids
    last = max(i for i, t in enumerate(tokens) if t not in tokens[:i])
    composer.eos_ids = {tokens[last]}  # pretend a later greedy token is the end of sequence
    out = composer.generate("the cat", config)[0]
    assert out.finish_reason == "eos" and out.token_ids == tokens[: last + 1]


def test_stream_yields_the_generated_text(tiny):
    composer = steered(tiny)
    config = DecodingConfig(max_new_tokens=10)
    pieces = list(composer.stream("the cat", config))
    assert len(pieces) > 1
    assert "".join(pieces) == composer.generate("the cat", config)[0].text
    assert "".join(composer.stream("the cat", config, draft=Draft(gamma=3))) == "".join(pieces)


def test_sampling_follows_the_composed_distribution(tiny):
    """The first sampled token's frequencies match softmax(composed logits / T)."""
    composer = steered(tiny)
    probs = torch.softmax(composer.session(["the cat"]).start().logits[0, -1] / 2.0, -1)
    config = DecodingConfig(max_new_tokens=1, do_sample=True, temperature=2.0, seed=0, num_return_sequences=400)
    draws = [c.token_ids[0] for c in composer.generate(["the cat"], config)]
    counts = torch.bincount(torch.tensor(draws), minlength=probs.shape[0]).double()
    likely = probs > 0.05
    assert torch.allclose(counts[likely] / 400, probs[likely].double(), atol=0.08)


def test_finished_rows_leave_the_batch_and_the_others_decode_as_before(tiny, monkeypatch):
    from composer.schedules import Linear
    from composer.session import Session

    objectives = [
        Objective("s", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"])), schedule=Linear(0, 1, 6))
    ]
    composer = Composer(tiny["base"], objectives)
    prompts, config = ["the cat", "hello", "write a function"], DecodingConfig(max_new_tokens=10)
    free = [c.token_ids for c in composer.generate(prompts, config)]
    # the first row with a token that is new to it at step 2 to 6: make that token the end of sequence
    row, end = next((r, i) for r, ids in enumerate(free) for i in range(2, 7) if ids[i] not in ids[:i])
    composer.eos_ids = {free[row][end]}
    alone = [composer.generate(p, config)[0].token_ids for p in prompts]
    assert alone[row] == free[row][: end + 1]
    batches: list[int] = []
    select = Session.select
    monkeypatch.setattr(Session, "select", lambda self, index: batches.append(len(index)) or select(self, index))
    for draft in (None, Draft(gamma=2)):
        batches.clear()
        out = composer.generate(prompts, config, draft=draft)
        assert [c.token_ids for c in out] == alone
        assert batches and max(batches) < len(prompts)  # the batch shrank once a row ended


def test_several_samples_see_their_own_prompt_as_history(tiny, monkeypatch):
    """The processors' history (the repetition penalty's) is each row's prompt, also when the base's weights
    serve a second prompt format and every prompt is sampled several times."""
    from composer import Chat

    seen = []

    def recorder(self):
        return lambda ids, scores: seen.append(ids.clone()) or scores

    monkeypatch.setattr(DecodingConfig, "processors", recorder)
    base = Member(ModelSpec(tiny["base"]))
    chat = Objective("chat", Member(ModelSpec(tiny["base"]), Chat(system="be kind")), base, weight=0.5)
    config = DecodingConfig(max_new_tokens=1, do_sample=True, seed=0, num_return_sequences=2)
    Composer(base, [chat]).generate(["the cat sat", "dog"], config)
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    cat, dog = (tokenizer(p)["input_ids"] for p in ("the cat sat", "dog"))
    history = seen[0].tolist()
    assert len(history) == 4 and all(len(row) == len(cat) for row in history)
    assert history[0] == history[1] == cat and history[2][-len(dog) :] == history[3][-len(dog) :] == dog


def test_sampling_knobs_under_greedy_decoding_warn_as_transformers_does():
    with pytest.warns(UserWarning, match="temperature, top_p apply only when sampling; greedy decoding ignores it"):
        DecodingConfig(temperature=0.3, top_p=0.5)
    with pytest.warns(UserWarning, match="decoding: top_k applies only when sampling"):
        DecodingConfig(top_k=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DecodingConfig(do_sample=True, temperature=0.3, top_k=5, top_p=0.5, min_p=0.1)
        DecodingConfig(repetition_penalty=1.2)


@pytest.fixture(scope="module")
def byte_level():
    from experts.family import MODELS_DIR

    return AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")


@functools.cache
def byte_fallback() -> PreTrainedTokenizerFast:
    from tests.tiny_models import build_byte_fallback_tokenizer

    return build_byte_fallback_tokenizer()


@functools.cache
def cleaning_up() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "a", "b", ".", " ", ","])}, "<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", clean_up_tokenization_spaces=True)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_stop_checks_of_the_tail_fire_where_the_whole_text_would(byte_level, data):
    """A stop string is looked for in the last tokens' text first: it must fire at the same token as a search of
    the whole decoded text, on a byte-level BPE (multi-byte characters split over tokens), a word-level
    tokenizer, special tokens kept, Llama-2's byte fallback (a run of byte pieces decodes as a whole) and a
    decode that cleans up spaces before punctuation (a space token then adds nothing)."""
    from tests.tiny_models import build_tokenizer

    tokenizer = data.draw(st.sampled_from([byte_level, build_tokenizer(), byte_fallback(), cleaning_up()]))
    tokens = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), min_size=1, max_size=40))
    text = tokenizer.decode(tokens)
    start = data.draw(st.integers(0, len(text) - 1)) if text else 0
    stop = text[start : start + data.draw(st.integers(1, 12))] or "x"
    config = DecodingConfig(max_new_tokens=40, stop=(stop, "\u00e9\n"))
    holder = SimpleNamespace(eos_ids=set(), tokenizer=tokenizer)
    ends = range(1, len(tokens) + 1)
    whole = [any(s in tokenizer.decode(tokens[:k]) for s in config.stop) for k in ends]
    tail = [Composer._finish_reason(holder, tokens[k - 1], tokens[:k], config) == "stop" for k in ends]
    assert tail.index(True) == whole.index(True) if True in whole else True not in tail


def test_a_stream_shows_exactly_the_text_that_generate_returns(byte_level, tmp_path):
    """A stop string spanning two tokens (the stream once showed its first part), and a multi-byte character
    cut by max_new_tokens (the stream once dropped it): a random model on the byte-level tokenizer, sampling."""
    from tests.tiny_models import build_model

    composer = Composer(str(build_model(tmp_path / "bytes", seed=0, tokenizer=byte_level, hidden=48)))
    seen = 0
    for seed in range(12):
        config = DecodingConfig(max_new_tokens=6, do_sample=True, seed=seed)
        tokens = composer.generate("hello", config)[0].token_ids
        pieces = [byte_level.decode(tokens[:k]) for k in range(1, 4)]
        straddle = pieces[1][len(pieces[0]) - 1 : len(pieces[0]) + 1]  # one token's last character, the next's first
        for stop in [(), (straddle,)] if len(straddle) == 2 and "\ufffd" not in straddle else [()]:
            config = DecodingConfig(max_new_tokens=6, do_sample=True, seed=seed, stop=stop)
            text = composer.generate("hello", config)[0].text
            seen += bool(stop) or text.endswith("\ufffd")
            assert "".join(composer.stream("hello", config)) == text
    assert seen >= 2  # the cases that once differed did occur


def test_the_repetition_penalty_reads_a_batched_row_as_it_reads_it_alone(tiny, monkeypatch):
    """A shorter row's left padding is not part of its history: the pad token kept its score (it lost it to the
    penalty in a batch, as transformers' generate() over a left-padded batch does)."""
    import composer.engine

    seen: list[torch.Tensor] = []

    def record(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        seen.append(scores.clone())
        return scores.argmax(-1)

    monkeypatch.setattr(composer.engine, "choose", record)
    both = steered(tiny)
    config = DecodingConfig(max_new_tokens=1, repetition_penalty=1.8)
    both.generate(["the cat sat on the mat and ran", "dog"], config)
    both.generate(["dog"], config)
    batched, alone, pad = seen[0][1], seen[1][0], both.tokenizer.pad_token_id
    assert float(batched[pad]) == pytest.approx(float(alone[pad]), rel=1e-4)
    assert torch.allclose(batched, alone, atol=1e-4)


@pytest.mark.parametrize(
    "pieces",
    [
        ["\u2581a", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "<0x0A>", "\u2581b"],  # 'a😀' then a newline stop
        ["\u2581a", "<0xE4>", "<0xBD>", "<0xA0>", "<0x0A>", "<0xE4>"],  # a run left open turns 你\n into bytes
        ["\u2581a", "<0x80>", "<0x41>", "<0x0A>", "\u2581b"],  # a stray byte: the run never reads as a newline
    ],
)
def test_byte_fallback_pieces_stop_and_stream_as_the_whole_text_reads(tmp_path, monkeypatch, pieces):
    """Llama-2's byte pieces decode run by run: the newline stop is found where the whole text has it, and the
    stream never shows characters that a later byte turns into replacement characters."""
    import composer.engine
    from tests.tiny_models import build_byte_fallback_tokenizer, build_model

    tokenizer = build_byte_fallback_tokenizer()
    tokenizer.pad_token = "<unk>"
    runner = Composer(str(build_model(tmp_path / "sp", seed=0, tokenizer=tokenizer)))
    forced = tokenizer.convert_tokens_to_ids(pieces)

    def choose(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        return torch.full((scores.shape[0],), forced[step.pop(0)], dtype=torch.long)

    monkeypatch.setattr(composer.engine, "choose", choose)
    config = DecodingConfig(max_new_tokens=len(pieces), stop=("\n",))
    step = list(range(len(pieces)))
    out = runner.generate("a", config)[0]
    whole = [tokenizer.decode(forced[:k]) for k in range(1, len(forced) + 1)]
    assert out.finish_reason == ("stop" if any("\n" in t for t in whole) else "length")
    step = list(range(len(pieces)))
    assert "".join(runner.stream("a", config)) == out.text


@pytest.mark.parametrize("pieces", [["a", " ", ".", "b"], ["a", " ", "n't", "b"], ["b", " ", "'", "s"]])
def test_a_stream_holds_back_what_a_clean_up_decode_would_remove(tmp_path, monkeypatch, pieces):
    """A decode that cleans up spaces (WordPiece's kind) removes a space already decoded once "." or "n't" follows:
    the stream must not have shown it."""
    import composer.engine
    from tests.tiny_models import build_model

    words = ["<unk>", "a", "b", ".", " ", "n't", "'", "s"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<unk>"))
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<unk>", clean_up_tokenization_spaces=True
    )
    runner = Composer(str(build_model(tmp_path / "clean", seed=0, tokenizer=tokenizer)))
    forced = tokenizer.convert_tokens_to_ids(pieces)
    step: list[int] = []
    monkeypatch.setattr(composer.engine, "choose", lambda scores, *_: torch.full((len(scores),), forced[step.pop(0)]))
    config = DecodingConfig(max_new_tokens=len(pieces))
    step[:] = range(len(pieces))
    text = runner.generate("a", config)[0].text
    assert " " not in text  # the clean-up did remove the space
    step[:] = range(len(pieces))
    assert "".join(runner.stream("a", config)) == text
