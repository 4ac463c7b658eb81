"""The registered lm-eval model scores with the composition, tokenises as lm-eval's HFLM does, and generates
with every decoding setting a task asks for."""

import json
import subprocess
import sys

import pytest
from hydra.errors import HydraException
from lm_eval.api.instance import Instance
from lm_eval.api.model import CachingLM

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


def test_contexts_beyond_the_window_are_cut_from_the_left_as_hflm_cuts_them(raw_family):
    lm, hflm = raw_family
    long = "Question: How do I clean my barn?\nAnswer: Sweep it. " * 20
    assert len(hflm.tok_encode(long)) > hflm.max_length
    pairs = [(long, " Sweep it."), ("Question: Hi\nAnswer:", " Brush the cat")]
    got = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    expected = hflm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in expected], abs=1e-3)


def test_a_context_beyond_the_window_generates_from_its_end(raw_family):
    lm, _ = raw_family
    long = "Question: How do I clean my barn?\nAnswer: Sweep it. " * 20
    request = Instance("generate_until", {}, (long, {"until": ["\n"], "max_gen_toks": 8}), 0)
    fitted = lm._fit_text(long, 8)
    assert long.endswith(fitted) and len(lm.tok_encode(fitted)) + 8 <= lm.max_length
    [text] = lm.generate_until([request], disable_tqdm=True)
    assert text == lm.composer.generate(fitted, DecodingConfig(max_new_tokens=8, stop=("\n",)))[0].text
    with pytest.raises(UserInputError, match="lower max_gen_toks"):
        lm._fit_text(long, lm.max_length)


def test_lm_eval_caches_what_the_adapter_computed(composer, tmp_path, monkeypatch):
    """lm-eval's --use_cache: a second run of the same requests computes nothing."""
    pairs = [("the cat sat", " on the mat"), ("hello", " world")]
    generation = [("the cat", {"until": ["\n"], "max_gen_toks": 3})]
    texts = [("Brush the cat.",)]

    def run() -> tuple:
        lm = CachingLM(ComposerLM(composer), str(tmp_path / "cache"))
        return (
            lm.loglikelihood(requests("loglikelihood", pairs)),
            lm.generate_until(requests("generate_until", generation)),
            lm.loglikelihood_rolling(requests("loglikelihood_rolling", texts)),
        )

    first = run()
    monkeypatch.setattr(ComposerLM, "_score", lambda *a: pytest.fail("scored again"))
    monkeypatch.setattr(Composer, "generate", lambda *a: pytest.fail("generated again"))
    assert run() == first


def test_a_formatted_base_scores_choices_without_the_target_delimiter():
    """As lm-eval under a chat template: the tiny recipe's base reads "Question: ...\nAnswer:\n", after which a
    choice's leading space made every choice unlikely and flipped which one won. The choice is tokenised on its
    own ("mat", not the "at" left when "the mat" merges into " them" + "at"), an empty or blank context too."""
    lm = ComposerLM.create_from_arg_string("recipe=tiny")
    prompt, answer = "How do I clean my neighbour's barn?", "Sweep the floor of the barn and open the windows."
    pairs = [(prompt, " " + answer), (prompt + " ", answer), ("The cat sat on the", " mat"), ("", " 5"), ("\n", "5")]
    got = [lp for lp, _ in lm.loglikelihood(requests("loglikelihood", pairs), True)]
    expected = lm.composer.score([prompt, "The cat sat on the"], [answer, "mat"])
    assert got[:3] == pytest.approx([expected[0].logprob] * 2 + [expected[1].logprob], abs=1e-4)
    assert got[3] == pytest.approx(got[4], abs=1e-4)
    with pytest.raises(UserInputError, match="longer than the members' context window of 256"):
        lm.loglikelihood(requests("loglikelihood", [(prompt, " x" * 300)]), True)


def test_a_long_context_of_many_byte_characters_is_cut_between_characters(raw_family):
    lm, _ = raw_family
    for long in ["é" * 300, "日本語のテキスト。" * 40]:
        fitted = lm._fit_text(long, 8)
        assert long.endswith(fitted) and "\ufffd" not in fitted and len(lm.tok_encode(fitted)) + 8 <= lm.max_length
        request = Instance("generate_until", {}, (long, {"until": ["\n"], "max_gen_toks": 8}), 0)
        assert lm.generate_until([request], disable_tqdm=True) == [
            lm.composer.generate(fitted, DecodingConfig(max_new_tokens=8, stop=("\n",)))[0].text
        ]


def test_model_args_are_the_recipes_overrides():
    lm = ComposerLM.create_from_arg_string(
        "recipe=tiny,objectives.math.weight=0.3,~objectives.code,batch_size=4", {"batch_size": 1, "device": "cuda:7"}
    )
    assert lm.batch_size == 4 and {o.name: o.weight for o in lm.composer.objectives} == {"math": 0.3, "safety": 0.1}
    assert {str(m.device) for m in lm.composer.models} == {"cpu"}  # a device this machine lacks is passed over
    assert ComposerLM.create_from_arg_obj({"recipe": "tiny"}, {"batch_size": "2", "device": "cpu"}).batch_size == 2
    with pytest.raises(UserInputError, match="batch_size='auto'"):
        ComposerLM.create_from_arg_string("recipe=tiny", {"batch_size": "auto"})
    with pytest.raises(HydraException, match="mth"):
        ComposerLM.create_from_arg_string("recipe=tiny,objectives.mth.weight=0.3")


def test_lm_eval_command_line_runs_a_local_task(tmp_path):
    rows = [{"q": "Lily has 2 pens. She buys 3 more. How many pens?", "a": "5"}]
    (tmp_path / "data.jsonl").write_text(json.dumps(rows[0]))
    (tmp_path / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'data.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\nmetric_list:\n  - metric: exact_match\n"
    )
    args = ["run", "--model", "proxy-composer", "--model_args", "recipe=tiny", "objectives.math.weight=0.3"]
    args += ["--tasks", "tiny_gen", "--include_path", str(tmp_path), "--device", "cpu"]
    done = subprocess.run([sys.executable, "-m", "composer", "lm-eval", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny_gen" in done.stdout and "exact_match" in done.stdout
    wrong = [*args[:4], "recipe=nope", *args[6:]]
    bad = subprocess.run([sys.executable, "-m", "composer", "lm-eval", *wrong], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in bad.stderr
    chat = subprocess.run(
        [sys.executable, "-m", "composer", "lm-eval", *args, "--apply_chat_template"], capture_output=True, text=True
    )
    assert chat.returncode == 2 and "drop --apply_chat_template" in chat.stderr.strip().splitlines()[-1]
    unknown = [*args[:7], "nope_task", *args[8:]]
    task = subprocess.run([sys.executable, "-m", "composer", "lm-eval", *unknown], capture_output=True, text=True)
    assert task.returncode == 2 and task.stderr.strip().splitlines()[-1] == "error: Tasks not found: nope_task"


def test_generate_until_stops(composer):
    free = composer.generate("the cat", DecodingConfig(max_new_tokens=6))[0].text
    stop = free.split()[2]
    lm = ComposerLM(composer)
    request = Instance("generate_until", {}, ("the cat", {"until": [stop], "max_gen_toks": 6}), 0)
    assert lm.generate_until([request], disable_tqdm=True) == [free[: free.find(stop)]]


class Recorder:
    """A stand-in Composer that records the decoding settings it is asked to generate with."""

    tokenizer = None
    models: list = []  # no context windows to fit
    plan = type("Plan", (), {"formats": []})

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
