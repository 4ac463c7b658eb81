"""The registered lm-eval model scores with Composer.score and generates with stop sequences."""

import json

import pytest
from lm_eval.api.instance import Instance

from composer import Chat, Composer, DecodingConfig, Member, ModelSpec, Objective
from composer.evaluation.lm_eval_model import ComposerLM


@pytest.fixture(scope="module")
def composer(tiny) -> Composer:
    expert = Member(ModelSpec(tiny["expert_a"]), Chat(system="be kind"))
    return Composer(tiny["base"], [Objective("kind", expert, Member(ModelSpec(tiny["anti"])))])


def test_loglikelihood_is_the_composed_score(composer):
    pairs = [("the cat sat", " on the mat"), ("hello", " world"), ("x", " y z")]
    lm = ComposerLM(composer, batch_size=2)
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
    expected = composer.score([c for c, _ in pairs], [t for _, t in pairs])
    assert [g for _, g in got] == [s.is_greedy for s in expected]
    assert [lp for lp, _ in got] == pytest.approx([s.logprob for s in expected], abs=1e-4)  # batch size differs


def test_generate_until_stops(composer):
    free = composer.generate("the cat", DecodingConfig(max_new_tokens=6))[0].text
    stop = free.split()[2]
    lm = ComposerLM(composer)
    request = Instance("generate_until", {}, ("the cat", {"until": [stop], "max_gen_toks": 6}), 0)
    assert lm.generate_until([request], disable_tqdm=True) == [free[: free.find(stop)]]


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
