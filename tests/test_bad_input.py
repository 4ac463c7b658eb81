"""Every user mistake gets a one-line error that says what to change."""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from composer import (
    Composer,
    Cosine,
    DecodingConfig,
    Linear,
    Member,
    ModelSpec,
    Objective,
    Piecewise,
    Template,
    UserInputError,
    Warmup,
)


def pair(tiny: dict, name: str = "s", **kwargs) -> Objective:
    return Objective(name, Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"])), **kwargs)


@contextmanager
def one_line_error(match: str) -> Iterator[None]:
    with pytest.raises(UserInputError, match=match) as info:
        yield
    assert "\n" not in str(info.value)


def test_empty_prompt(tiny):
    with one_line_error(r"prompt 1 \(counting from 0\) is empty"):
        Composer(tiny["base"], [pair(tiny)]).generate(["ok", ""])


def test_prompt_longer_than_the_context_window(tiny):
    composer = Composer(tiny["short"])
    with one_line_error("context window of 16; shorten the prompt"):
        composer.generate("the cat " * 20)
    with one_line_error("lower max_new_tokens"):
        composer.generate("the cat", DecodingConfig(max_new_tokens=40))


@pytest.mark.parametrize(
    ("path", "message"),
    [("/no/such/folder", "not found: no such folder"), ("nobody/no-such-model", "could not be loaded")],
)
def test_unknown_model_path(path, message):
    with one_line_error(message):
        Composer(path)


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, "1.0", True, 10**400])
def test_bad_weight(tiny, weight):
    with one_line_error("must be a finite number"):
        pair(tiny, weight=weight)


def test_bad_per_row_weights(tiny):
    composer = Composer(tiny["base"], [pair(tiny)])
    with one_line_error("must be a finite number"):
        composer.generate("the cat", weights={"s": math.nan})
    assert len(composer.generate("the cat", DecodingConfig(max_new_tokens=2), weights={"s": 2**63})) == 1
    with one_line_error(r"unknown objective\(s\) \['code'\]; this recipe has \['s'\]"):
        composer.generate("the cat", weights={"code": 1.0})
    with one_line_error("give one per prompt"):
        composer.generate(["a", "b"], weights=[{"s": 1.0}])
    with one_line_error(r"give a mapping \{objective: weight\}"):
        composer.generate("the cat", weights="s=1")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Linear(steps=0), "steps=0 must be a whole number >= 1"),
        (lambda: Cosine(start=math.nan), "start=nan must be a finite number"),
        (lambda: Warmup(steps=2.5), "steps=2.5"),
        (lambda: Piecewise(boundaries=(4,), values=(1.0,)), "1 boundaries need 2 values"),
        (lambda: Piecewise(boundaries=(8, 4), values=(1, 2, 3)), "must be increasing"),
    ],
)
def test_misconfigured_schedule(build, message):
    with one_line_error(message):
        build()


def test_foreign_tokenizer_names_both_models_and_the_token(tiny):
    objective = Objective("f", Member(ModelSpec(tiny["foreign"])), Member(ModelSpec(tiny["anti"])))
    with one_line_error(r"different tokenizers: token 9 is 'cat' in one and 'dog' in the other"):
        Composer(tiny["base"], [objective])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0, "do_sample": True}, "temperature=0.0 must be a number > 0.0"),
        ({"temperature": -1.0}, "temperature=-1.0 must be a number >= 0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"num_return_sequences": 3}, "needs do_sample=true"),
        ({"stop": [""]}, "non-empty strings"),
        ({"stop": 3}, "must be a string or a list of strings"),
        ({"seed": 1.5}, "seed=1.5 must be a whole number >= 0"),
        ({"seed": "x"}, "seed='x'"),
        ({"seed": 2**64}, "must be a whole number <= 18446744073709551615"),
        ({"stop": b"\n"}, "must be a string or a list of strings"),
    ],
)
def test_bad_decoding_settings(kwargs, message):
    with one_line_error(message):
        DecodingConfig(**kwargs)


def test_other_mistakes(tiny):
    with one_line_error("more than once"):
        Composer(tiny["base"], [pair(tiny), pair(tiny)])
    with one_line_error("has no '{prompt}' field"):
        Template("Question:")
    with one_line_error("dtype 'fp13' is unknown"):
        ModelSpec(tiny["base"], dtype="fp13")
    with one_line_error("objective name"):
        pair(tiny, name="bad name!")
    with one_line_error("objective name 3"):
        pair(tiny, name=3)
    with one_line_error(r"bounds \(0,\) must be a pair"):
        pair(tiny, bounds=(0,))
    with one_line_error("bounds 5 must be a pair"):
        pair(tiny, bounds=5)
    with one_line_error("the expert is a int; give a model path"):
        Objective("s", 3, tiny["anti"])
    with one_line_error("no prompts were given"):
        Composer(tiny["base"]).generate([])
    with one_line_error("no prompts were given"):
        Composer(tiny["base"]).score([], [])
    with one_line_error(r"continuation\(s\) \[0\] have no tokens"):
        Composer(tiny["base"]).score(["the cat"], [" "])


def test_convenient_spellings_mean_what_they_say(tiny):
    """A string where a list or a Member is expected is taken as the one item a user meant."""
    assert DecodingConfig(stop="\n\n").stop == ("\n\n",) and DecodingConfig(stop=None).stop == ()
    by_path = Objective("s", tiny["expert_a"], ModelSpec(tiny["anti"]))
    assert by_path == pair(tiny) and Objective("s", Path(tiny["expert_a"]), tiny["anti"]) == pair(tiny)
    assert Composer(Path(tiny["base"])).plan.specs == [ModelSpec(tiny["base"])]
    rows = Composer(tiny["base"], [pair(tiny)]).generate(
        ["a", "b"], DecodingConfig(max_new_tokens=1), weights=({"s": w} for w in (1.0, 2.0))
    )  # any iterable of mappings, one per prompt
    assert [r.weights for r in rows] == [{"s": 1.0}, {"s": 2.0}]
    composer = Composer(tiny["base"], [guarded(tiny, weight=-1.0, protected=True)], override_guards="safety")
    assert composer.override_guards == ("safety",)


def guarded(tiny: dict, **kwargs) -> Objective:
    return Objective("safety", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"])), **kwargs)


def test_protected_objective_refuses_a_negative_weight(tiny):
    with one_line_error(r"protected objective would get a negative weight \(-1\); .* override_guards=\[safety\]"):
        Composer(tiny["base"], [guarded(tiny, weight=-1.0, protected=True)])
    with one_line_error("protected objective would get a negative weight"):
        Composer(tiny["base"], [guarded(tiny, protected=True)]).generate("the cat", weights={"safety": -0.5})
    rows = [{}, {"safety": 1}, {"safety": -1}]
    with one_line_error(r"^weights of prompt 2 \(counting from 0\): objective 'safety': protected objective would"):
        Composer(tiny["base"], [guarded(tiny, protected=True)]).check(["a", "b", "c"], rows)
    with one_line_error(r"^objective 'safety': protected"):  # one mapping for every prompt: no prompt to name
        Composer(tiny["base"], [guarded(tiny, protected=True)]).check(["a", "b", "c"], {"safety": -1})
    with one_line_error("negative weight"):  # a schedule that crosses zero is caught before decoding
        Composer(tiny["base"], [guarded(tiny, protected=True, schedule=Linear(start=1.0, end=-1.0, steps=4))])


def test_bounds_are_checked_on_weight_times_schedule(tiny):
    with one_line_error(r"weight reaches \[0, 3\] outside its bounds \[0.0, 2.0\]"):
        Composer(tiny["base"], [guarded(tiny, weight=3.0, bounds=(0.0, 2.0), schedule=Warmup(1.0, 4))])
    composer = Composer(tiny["base"], [guarded(tiny, bounds=(None, 2.0))])
    with one_line_error("outside its bounds"):
        composer.generate("the cat", weights={"safety": 2.5})
    with one_line_error("reversed"):
        guarded(tiny, bounds=(2.0, 1.0))


def test_an_explicit_override_is_recorded(tiny):
    composer = Composer(tiny["base"], [guarded(tiny, weight=-1.0, protected=True)], override_guards=["safety"])
    assert composer.guard_notes == ["safety: protected objective would get a negative weight (-1) (guard overridden)"]
    out = composer.generate("the cat", DecodingConfig(max_new_tokens=2))[0]
    assert out.guards_overridden == composer.guard_notes
    rows = composer.generate(["the cat", "a dog"], DecodingConfig(max_new_tokens=2), weights=[{"safety": 1}, {}])
    assert [r.guards_overridden for r in rows] == [[], composer.guard_notes]  # only the row that broke the guard
    with one_line_error("unknown objective"):
        Composer(tiny["base"], [guarded(tiny)], override_guards=["code"])


def test_a_decoding_config_may_be_a_mapping_of_its_fields(tiny):
    composer = Composer(tiny["base"], [pair(tiny)])
    as_mapping = composer.generate(["the cat"], {"max_new_tokens": 4})[0].token_ids
    assert as_mapping == composer.generate(["the cat"], DecodingConfig(max_new_tokens=4))[0].token_ids
    with one_line_error(r"config names unknown decoding setting\(s\) \['max_tokens'\]"):
        composer.generate(["the cat"], {"max_tokens": 4})
    with one_line_error("config=4: give a DecodingConfig or a mapping of its fields"):
        composer.generate(["the cat"], 4)
    with one_line_error("stream takes one prompt, a string, not list"):
        next(composer.stream(["the cat"], {"max_new_tokens": 4}))


def test_check_takes_prompts_as_generate_does(tiny):
    composer = Composer(tiny["base"], [pair(tiny)])
    composer.check("the cat", [{"s": 0.5}], max_new_tokens=4)  # one prompt, as generate("the cat") takes it
    with one_line_error("no prompts were given; pass at least one"):
        composer.check([])


def test_the_session_primitive_refuses_misuse_in_one_line(tiny):
    """crop(3) with nothing generated once set the step count to 3: the next token took step 3's weights."""
    session = Composer(tiny["base"], [pair(tiny)]).session(["the cat", "a dog"])
    with one_line_error("extend before start: call session.start"):
        session.extend(torch.tensor([[5], [6]]))
    session.start()
    for bad in (3, -1, 1.0):
        with one_line_error(r"crop\(.*\): keep a whole number of the 0 tokens appended"):
            session.crop(bad)
    for bad in (torch.tensor([5, 6]), torch.tensor([[5]]), torch.tensor([[5.0], [6.0]])):
        with one_line_error(r"extend takes token ids as a long tensor of shape \(2, n\)"):
            session.extend(bad)
    for bad in (torch.tensor([2]), torch.tensor([[0]]), [0.5]):
        with one_line_error(r"select takes a tensor of row numbers in \[0, 2\)"):
            session.select(bad)
    session.extend(torch.tensor([[5], [6]]))
    session.crop(0)
    assert session.generated == 0 and session.steps.tolist() == [0, 0]


def test_numpy_weights_are_numbers_and_one_pair_scores_as_one(tiny):
    import numpy as np

    composer = Composer(tiny["base"], [pair(tiny, weight=np.float32(0.5))])
    assert composer.objectives[0].weight == 0.5 and type(composer.objectives[0].weight) is float
    config = DecodingConfig(max_new_tokens=4)
    as_numpy = composer.generate(["the cat"], config, weights={"s": np.float32(0.25)})[0].token_ids
    assert as_numpy == composer.generate(["the cat"], config, weights={"s": 0.25})[0].token_ids
    (one,) = composer.score("the cat", " sat down")
    assert one.logprob == composer.score(["the cat"], [" sat down"])[0].logprob
    with one_line_error("score takes two lists of texts"):
        composer.score("the cat", [" sat", " ran"])
    for bad in (None, [[1, 2]]):
        with one_line_error("prompts"):
            composer.generate(bad)


def test_the_api_refuses_wrong_types_in_one_line(tiny):
    objective = pair(tiny)
    assert list(Composer(tiny["base"], objective).objectives) == [objective]  # one alone, as one prompt alone
    with one_line_error("objectives: give a list of Objective"):
        Composer(tiny["base"], {"s": objective})
    with one_line_error("Member format 'chat': give a prompt format"):
        Member(ModelSpec(tiny["anti"]), "chat")
    with one_line_error(r"weights=tensor\(\[\[1.\], \[2.\]\]\): give a mapping"):
        Composer(tiny["base"], objective).generate(["a", "b"], weights=torch.tensor([[1.0], [2.0]]))


def test_a_model_without_an_attention_cache_is_refused(tiny, tmp_path: Path):
    """Mamba keeps a recurrent state, which the streams cannot mask or crop: its logits were silently wrong."""
    from transformers import MambaConfig, MambaForCausalLM

    from experts.loading import register
    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    model = MambaForCausalLM(MambaConfig(vocab_size=len(tokenizer), hidden_size=16, state_size=4, num_hidden_layers=1))
    model.save_pretrained(tmp_path / "mamba")
    tokenizer.save_pretrained(tmp_path / "mamba")
    with one_line_error(r"'.*mamba' \(MambaForCausalLM\) keeps a recurrent state.* Mamba are not supported"):
        Composer(str(tmp_path / "mamba"), [pair(tiny)])
    with one_line_error(r"'memory:ssm' \(MambaForCausalLM\) keeps a recurrent state"):
        register("ssm", model, tokenizer)


def test_nan_logits_are_refused_not_decoded_as_token_0(tmp_path: Path):
    """Gemma 2's eager attention in float64 gives NaN over left-padded rows: every padded row generated
    token 0 and scores were NaN, silently."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    for name, seed in [("base", 0), ("expert", 1), ("anti", 2)]:
        torch.manual_seed(seed)
        config = Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, head_dim=8,
            num_attention_heads=2, num_key_value_heads=1, sliding_window=4, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        Gemma2ForCausalLM(config).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    spec = {name: ModelSpec(str(tmp_path / name), dtype="float64") for name in ("base", "expert", "anti")}
    composer = Composer(spec["base"], [Objective("o", Member(spec["expert"]), Member(spec["anti"]))])
    prompts = ["hello", "the cat sat on the mat and ran to the park"]
    with one_line_error("Gemma2ForCausalLM returned NaN logits for these prompts .* float32 or bfloat16"):
        composer.generate(prompts, DecodingConfig(max_new_tokens=2))
    with one_line_error("Gemma2ForCausalLM returned NaN logits"):
        composer.score(prompts, ["yes", "no"])
    assert composer.generate(prompts[:1], DecodingConfig(max_new_tokens=2))[0].token_ids  # no padding, no NaN
