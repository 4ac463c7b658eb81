"""The registered lm-eval model scores with the composition, tokenises as lm-eval's HFLM does, and generates
with every decoding setting a task asks for."""

import json

import pytest
from lm_eval.api.instance import Instance

from composer import Chat, Composer, DecodingConfig, Member, ModelSpec, Objective, UserInputError
from composer.evaluation.lm_eval_model import ComposerLM
from composer.hf_model import ComposedForCausalLM
from experts.family import MODELS_DIR


@pytest.fixture(scope="module")
def composer(tiny) -> Composer:
    expert = Member(ModelSpec(tiny["expert_a"]), Chat(system="be kind"))
    return Composer(tiny["base"], [Objective("kind", expert, Member(ModelSpec(tiny["anti"])))])


def family_composer(expert_format: Chat | None = None) -> Composer:
    """The shipped family: its tokenizer adds a start token and keeps spaces, as Llama's does."""
    spec = ModelSpec(str(MODELS_DIR / "tiny-expert-safety"))
    expert = Member(spec) if expert_format is None else Member(spec, expert_format)
    objectives = [
        Objective("safety", expert, str(MODELS_DIR / "tiny-small"), weight=0.6),
        Objective("math", str(MODELS_DIR / "tiny-expert-math"), str(MODELS_DIR / "tiny-small"), weight=-0.3),
    ]
    return Composer(str(MODELS_DIR / "tiny-base"), objectives)


@pytest.fixture(scope="module")
def raw_family() -> tuple[ComposerLM, object]:
    """ComposerLM and lm-eval's HFLM over the same raw composition, which HFLM can score (no prompt formats)."""
    from lm_eval.models.huggingface import HFLM

    composer = family_composer()
    hflm = HFLM(pretrained=ComposedForCausalLM(composer), tokenizer=composer.tokenizer, batch_size=3)
    return ComposerLM(composer, batch_size=3), hflm


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_is_the_composed_score(composer):
    pairs = [("the cat sat", " on the mat"), ("hello", " world"), ("x", " y z")]
    lm = ComposerLM(composer, batch_size=2)
    got = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    expected = composer.score([c for c, _ in pairs], [t for _, t in pairs])
    assert [g for _, g in got] == [s.is_greedy for s in expected]
    assert [lp for lp, _ in got] == pytest.approx([s.logprob for s in expected], abs=1e-4)  # batch size differs


def test_loglikelihood_tokenises_as_hflm(raw_family):
    """The context's trailing whitespace joins the continuation; an empty context is one start token."""
    lm, hflm = raw_family
    pairs = [
        ("Question: Hi\nAnswer: ", "Brush the cat"),
        ("", "Brush the cat"),
        ("Question: How do I clean my barn?\nAnswer:\n", "Sweep it."),
        ("Question: Hi\nAnswer:", " Brush the cat and the dog"),
    ]
    got = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    expected = hflm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in expected]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in expected], abs=1e-3)


def test_chat_members_read_the_context_without_its_trailing_whitespace():
    composer = family_composer(Chat())
    lm = ComposerLM(composer)
    [(got, _)] = lm.loglikelihood(requests("loglikelihood", [("Question: Hi\nAnswer: ", "Brush it")]), True)
    [expected] = composer.score(["Question: Hi\nAnswer:"], [" Brush it"])
    assert got == pytest.approx(expected.logprob, abs=1e-4)


def test_loglikelihood_rolling_matches_hflm(raw_family):
    """Over one window and over several (the family's window is 256 tokens), conditioned on one start token."""
    lm, hflm = raw_family
    texts = [("Brush the cat.",), ("Question: How do I clean my barn?\nAnswer: Sweep it. " * 30,)]
    assert len(hflm.tok_encode(texts[1][0])) > 2 * hflm.max_length
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", texts), disable_tqdm=True)
    expected = hflm.loglikelihood_rolling(requests("loglikelihood_rolling", texts), disable_tqdm=True)
    assert got == pytest.approx(expected, abs=1e-3)


def test_generate_until_stops(composer):
    free = composer.generate("the cat", DecodingConfig(max_new_tokens=6))[0].text
    stop = free.split()[2]
    lm = ComposerLM(composer)
    request = Instance("generate_until", {}, ("the cat", {"until": [stop], "max_gen_toks": 6}), 0)
    assert lm.generate_until([request], disable_tqdm=True) == [free[: free.find(stop)]]


class Recorder:
    """A stand-in Composer that records the decoding settings it is asked to generate with."""

    tokenizer = None

    def __init__(self) -> None:
        self.configs: list[DecodingConfig] = []

    def generate(self, prompts: list[str], config: DecodingConfig) -> list:
        self.configs.append(config)
        return [type("Completion", (), {"text": "ok"}) for _ in prompts]


def test_every_decoding_setting_of_a_task_reaches_the_composer():
    recorder = Recorder()
    lm = ComposerLM(recorder, max_gen_toks=9)
    sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.05, "seed": 3}
    settings = [
        {"until": ["\n\n", ""], **sampling},
        {"until": "Q:", "max_new_tokens": 4, "repetition_penalty": 1.2, "temperature": 0.0},
    ]
    assert lm.generate_until(requests("generate_until", [("hi", s) for s in settings]), True) == ["ok", "ok"]
    assert recorder.configs == [
        DecodingConfig(max_new_tokens=9, stop=("\n\n",), **sampling),
        DecodingConfig(max_new_tokens=4, do_sample=False, repetition_penalty=1.2, stop=("Q:",)),
    ]


def test_unknown_generation_settings_are_refused_before_generating():
    recorder = Recorder()
    settings = [{"until": ["\n"]}, {"until": ["\n"], "top_a": 0.2, "num_beams": 4}]
    with pytest.raises(UserInputError, match=r"\['num_beams', 'top_a'\] are not supported") as err:
        ComposerLM(recorder).generate_until(requests("generate_until", [("hi", s) for s in settings]), True)
    assert "\n" not in str(err.value) and "top_p" in str(err.value)
    assert recorder.configs == []


def test_simple_evaluate_runs_a_local_multiple_choice_task(composer, tmp_path):
    from lm_eval import simple_evaluate

    rows = [{"q": "the cat sat on the", "choices": ["mat", "dog"], "label": 0} for _ in range(3)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'data.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model=ComposerLM(composer), tasks=["tiny_mc"], task_manager=TaskManager(include_path=str(tmp_path))
    )
    assert 0.0 <= results["results"]["tiny_mc"]["acc,none"] <= 1.0
