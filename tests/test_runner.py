"""Prompt files, the resumable JSONL output, and the run loop on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from composer import Chat, Composer, DecodingConfig, Member, ModelSpec, Objective
from composer.runner import (
    SWEEP_JOB,
    Interrupted,
    PromptItem,
    check_prompts,
    load_prompts,
    prepare_output,
    read_prompt_file,
    run_job,
    run_prompts,
    run_settings,
)
from experts.errors import UserInputError


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_text_file_gives_one_prompt_a_line_with_its_line_number_as_id(tmp_path: Path):
    items = read_prompt_file(write_lines(tmp_path / "p.txt", "the cat", "", "a dog"))
    assert items == [PromptItem(1, "the cat"), PromptItem(3, "a dog")]


def test_a_jsonl_file_carries_ids_and_per_prompt_weights(tmp_path: Path):
    path = write_lines(
        tmp_path / "p.jsonl", '{"id": "a", "prompt": "x", "weights": {"math": 0.5}}', '{"id": 7, "prompt": "y"}'
    )
    assert read_prompt_file(path) == [PromptItem("a", "x", {"math": 0.5}), PromptItem(7, "y")]
    own = write_lines(tmp_path / "own.jsonl", '{"id": 1, "prompt": "x", "answer": "4", "prompt_1": "q", "ID": 9}')
    assert read_prompt_file(own) == [PromptItem(1, "x")]  # a dataset's own fields are the user's


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": "y"}', '{"id": "a", "prompt": "z"}'],
         "p.jsonl line 3: duplicate id 'a' (first on line 1)"),
        (['{"id": "a", "prompt": "x"}', '{"prompt": "y"}'], "p.jsonl line 2: missing 'id'"),
        (['{"id": null, "prompt": "x"}'], "p.jsonl line 1: id None must be a string or a whole number"),
        (['{"id": 1, "prompt": "x"', ], "p.jsonl line 1: not valid JSON"),
        (['{"id": 1, "prompt": "x", "weights": [1]}'], "p.jsonl line 1: 'weights' must be an object"),
        (['{"id": 1, "prompt": "x", "weight": {"code": 0}}'],
         "p.jsonl line 1: unknown key 'weight'; did you mean 'weights'?"),
    ],
)  # fmt: skip
def test_bad_prompt_files_are_refused_in_one_line(tmp_path: Path, lines: list[str], message: str):
    with pytest.raises(UserInputError) as caught:
        read_prompt_file(write_lines(tmp_path / "p.jsonl", *lines))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_prompts_file_replaces_the_recipe_prompts_and_no_prompts_is_refused(tmp_path: Path):
    path = write_lines(tmp_path / "p.txt", "from the file")
    assert load_prompts(["inline"], str(path)) == [PromptItem(1, "from the file")]
    assert load_prompts(["a", "b"], None) == [PromptItem(1, "a"), PromptItem(2, "b")]
    with pytest.raises(UserInputError, match="no prompts"):
        load_prompts([], None)


def test_every_prompt_is_checked_before_decoding_and_named_by_its_id(tiny: dict[str, str]):
    """A bad prompt once failed the run only when its batch came, after the batches before it had decoded."""
    objective = Objective("math", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"])), protected=True)
    composer = Composer(tiny["base"], [objective])
    good = PromptItem(1, "the cat")
    check_prompts(composer, [good, PromptItem("a", "x", {"math": 0.5})], max_new_tokens=8)
    for bad, message in [
        (PromptItem("a", "x", {"maths": 1.0}), r"prompt 'a': weights name unknown objective\(s\) \['maths'\]"),
        (PromptItem("a", "x", {"math": float("inf")}), "prompt 'a': .*math.*finite"),
        (PromptItem("a", "x", {"math": -0.5}), "prompt 'a': objective 'math': protected"),
        (PromptItem(7, "the cat " * 200), "prompt 7: a prompt is .* tokens but model 'base' has a context window"),
        (PromptItem(7, "the cat " * 62), "prompt 7: a prompt of .* plus max_new_tokens=8 exceeds"),
    ]:
        with pytest.raises(UserInputError, match=message):
            check_prompts(composer, [good, bad], max_new_tokens=8)


def test_resume_cuts_a_torn_last_line_and_keeps_the_finished_records(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": 1, "prompt": "x", "text": "a"}\n{"id": 2, "prompt": "y", "text": "b"}\n{"id": 3, "te')
    assert [r["id"] for r in prepare_output(out, resume=True)] == [1, 2]
    assert out.read_bytes() == b'{"id": 1, "prompt": "x", "text": "a"}\n{"id": 2, "prompt": "y", "text": "b"}\n'


def test_an_existing_output_needs_resume_and_a_damaged_one_is_refused(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "prompt": "x", "text": "a"}\nnot json\n{"id": 3}\n')
    with pytest.raises(UserInputError, match="exists; pass resume=true"):
        prepare_output(out, resume=False)
    with pytest.raises(UserInputError, match="line 2 is damaged"):
        prepare_output(out, resume=True)
    assert prepare_output(tmp_path / "new" / "out.jsonl", resume=False) == []


def test_resume_refuses_an_output_written_with_other_settings(tmp_path: Path):
    """A sweep sharing one output with resume=true once filled job 1's metrics with job 0's records."""
    out = tmp_path / "out.jsonl"
    settings = {"objectives": {"code": {"weight": 0.0}}, "decoding": {"max_new_tokens": 8}}
    assert prepare_output(out, resume=False, settings=settings) == []
    out.write_text('{"id": 1, "prompt": "x", "text": "a"}\n')
    assert len(prepare_output(out, resume=True, settings=settings)) == 1
    changed = {"objectives": {"code": {"weight": 0.5}}, "decoding": {"max_new_tokens": 16}}
    with pytest.raises(UserInputError, match=r"written with decoding.max_new_tokens=8, this run has 16 \(and 1 more"):
        prepare_output(out, resume=True, settings=changed)
    with pytest.raises(UserInputError, match="written with objectives.code=None, this run has {}"):
        prepare_output(out, resume=True, settings={**settings, "objectives": {"code": {}}})
    swept = tmp_path / "swept.jsonl"  # a sweep over keys a resume may change (speculative.gamma=0,2)
    prepare_output(swept, resume=False, settings={**settings, SWEEP_JOB: 0})
    swept.write_text('{"id": 1, "prompt": "x", "text": "a"}\n')
    with pytest.raises(UserInputError, match="written with sweep job=0, this run has 1"):
        prepare_output(swept, resume=True, settings={**settings, SWEEP_JOB: 1})
    assert len(prepare_output(swept, resume=True, settings=settings)) == 1  # finished by a single run
    # a setting that a later version added, at its default, is no change (say decoding.do_sample, before it existed)
    older = tmp_path / "older.jsonl"
    prepare_output(older, resume=False, settings={"decoding": {"max_new_tokens": 8}})
    older.write_text('{"id": 1, "prompt": "x", "text": "a"}\n')
    newer = {"decoding": {"max_new_tokens": 8, "do_sample": False}}
    assert len(prepare_output(older, resume=True, settings=newer)) == 1
    with pytest.raises(UserInputError, match="written with decoding.do_sample=None, this run has True"):
        prepare_output(older, resume=True, settings={"decoding": {"max_new_tokens": 8, "do_sample": True}})


def test_resume_refuses_records_of_other_prompts_or_weights(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "prompt": "x", "text": "a", "weights": {"math": 0.1}}\n')
    mine = [PromptItem(1, "x", {"math": 0.1}), PromptItem(2, "y")]
    assert len(prepare_output(out, resume=True, items=mine)) == 1
    for items in ([PromptItem(1, "another x"), PromptItem(2, "y")], [PromptItem(1, "x", {"math": 0.2})]):
        with pytest.raises(UserInputError, match="id 1 was generated for another prompt or other weights"):
            prepare_output(out, resume=True, items=items)
    with pytest.raises(UserInputError, match="id 1 was generated for another prompt or other weights"):
        prepare_output(out, resume=True, items=[PromptItem(1, "x", {"math": "0.1"})])
    with pytest.raises(UserInputError, match="id 1 was generated for another prompt or other weights"):
        prepare_output(out, resume=True, items=[PromptItem(1, "x")], recipe={"math": 0.5})  # its weights dropped
    assert len(prepare_output(out, resume=True, items=[PromptItem(1, "x")], recipe={"math": 0.1})) == 1
    out.with_name("out.jsonl.settings.json").write_text("{not json")
    with pytest.raises(UserInputError, match="settings.json' cannot be read; delete it to resume without"):
        prepare_output(out, resume=True, settings={}, items=mine)
    with pytest.raises(UserInputError, match="holds id 1, which is not among this run's prompts"):
        prepare_output(out, resume=True, items=[PromptItem(2, "y")])
    for line in ('{"id": 1, "text": "a"}', '{"id": [1], "prompt": "x", "text": "a"}'):
        out.write_text(line + "\n")
        with pytest.raises(UserInputError, match="line 1 is not a record of a run"):
            prepare_output(out, resume=True, items=mine)


def test_an_output_that_is_a_folder_and_a_prompts_file_of_another_kind_are_refused(tmp_path: Path):
    with pytest.raises(UserInputError, match="is a folder; give a file in it"):
        prepare_output(tmp_path, resume=True)
    with pytest.raises(UserInputError, match=r"give a .jsonl file .* or a .txt file"):
        read_prompt_file(write_lines(tmp_path / "p.json", '["a", "b"]'))
    assert read_prompt_file(write_lines(tmp_path / "P.JSONL", '{"id": 1, "prompt": "a"}')) == [PromptItem(1, "a")]
    assert read_prompt_file(write_lines(tmp_path / "prompts", "a")) == [PromptItem(1, "a")]
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(UserInputError, match="is not UTF-8 \\(byte 3\\); save it as UTF-8"):
        read_prompt_file(tmp_path / "latin1.txt")


def test_run_settings_leave_out_what_may_change_on_resume():
    from hydra import compose, initialize_config_dir

    from composer.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["recipe=tiny", "batch_size=3", "output=x.jsonl"])
        other = compose(
            "config", overrides=["recipe=tiny", "compile=true", "speculative.gamma=4", "resume=true", "base.device=cpu"]
        )
        longer = compose("config", overrides=["recipe=tiny", "decoding.max_new_tokens=99"])
    assert run_settings(cfg) == run_settings(other) != run_settings(longer)
    assert run_settings(cfg)["base"]["path"] == "${family:tiny-base}"  # a moved checkout still resumes
    assert run_settings(cfg, job=3)[SWEEP_JOB] == 3
    code = run_settings(cfg)["objectives"]["code"]
    assert "metric" not in code and "weight" in code


def test_ctrl_c_during_decoding_says_how_to_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from hydra import compose, initialize_config_dir

    from composer import runner
    from composer.cli import CONF_DIR

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_prompts", interrupted)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["recipe=tiny", f"output={tmp_path / 'a.jsonl'}"])
    with pytest.raises(Interrupted, match=f"add output={tmp_path / 'a.jsonl'} resume=true to finish"):
        run_job(cfg, tmp_path)


def test_run_prompts_appends_one_flushed_record_per_prompt_with_its_weights(tiny: dict[str, str], tmp_path: Path):
    composer = Composer(
        tiny["base"], [Objective("chat", Member(ModelSpec(tiny["expert_a"]), Chat()), Member(ModelSpec(tiny["anti"])))]
    )
    items = [PromptItem("a", "the cat"), PromptItem("b", "a dog", {"chat": 0.0}), PromptItem("c", "hello")]
    out = tmp_path / "out.jsonl"
    records = run_prompts(composer, items, DecodingConfig(max_new_tokens=3), out, batch_size=2, trace=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == records
    assert [r["id"] for r in lines] == ["a", "b", "c"]
    assert [r["weights"] for r in lines] == [{"chat": 1.0}, {"chat": 0.0}, {"chat": 1.0}]
    assert all(
        len(r["trace"]) == len(composer.tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in lines
    )
    assert {r["finish_reason"] for r in lines} <= {"eos", "length"}


def test_several_samples_are_each_shown_and_recorded(tiny: dict[str, str], tmp_path: Path, capsys):
    composer = Composer(tiny["base"])
    config = DecodingConfig(max_new_tokens=3, do_sample=True, seed=0, num_return_sequences=2)
    (record,) = run_prompts(composer, [PromptItem("a", "the cat")], config, tmp_path / "out.jsonl", 1, False)
    assert len(record["text"]) == len(record["tokens"]) == len(record["finish_reason"]) == 2
    shown = capsys.readouterr()
    assert all(f"[a#{k}] {text}" in shown.out + shown.err for k, text in enumerate(record["text"], start=1))


def test_a_metric_scores_every_sample(tmp_path: Path):
    from hydra import compose, initialize_config_dir

    from composer.cli import CONF_DIR
    from composer.config import build_metrics

    overrides = ["recipe=tiny", "prompts=[Tell me how to steal a horse.]", "decoding.max_new_tokens=6",
                 "decoding.do_sample=true", "decoding.temperature=3.0", "decoding.seed=0",
                 "decoding.num_return_sequences=3", "~objectives.math.metric.pattern", "~objectives.math.metric.where",
                 "++objectives.math.metric._target_=composer.metrics.MeanWords"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    summary = run_job(cfg, tmp_path)
    (record,) = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert len(record["text"]) == 3
    assert len({len(text.split()) for text in record["text"]}) > 1  # samples differ: the first alone would not do
    for name, metric in build_metrics(cfg).items():
        assert summary["metrics"][name] == metric([record["prompt"]] * 3, record["text"])


def test_an_output_behind_a_dangling_link_keeps_the_link(tmp_path: Path):
    link = tmp_path / "out.jsonl"
    link.symlink_to(tmp_path / "runs" / "target.jsonl")
    assert prepare_output(link, resume=False) == []
    assert link.is_symlink() and not (tmp_path / "runs" / "target.jsonl").exists()
