"""The miniature reproduction: gap arithmetic, its table and chart, and one small end-to-end run."""

import math
import struct

import pytest

from composer.evaluation.evaluate import evaluate
from composer.evaluation.report import gap_closed, markdown_table, metrics_table, write_outputs

SCORES = {
    "math": {"base": 0.2, "tuned": 0.8, "expert": 0.5, "proxy": 0.7, "multi": 0.65},
    "safety": {"base": 0.5, "tuned": 1.0, "expert": 0.9, "proxy": 0.9, "multi": 0.95},
}
for row in SCORES.values():
    row["gap_closed_proxy"] = gap_closed(row, "proxy")
    row["gap_closed_multi"] = gap_closed(row, "multi")


def test_gap_closed_is_the_papers_ratio():
    assert SCORES["math"]["gap_closed_proxy"] == pytest.approx(0.5 / 0.6)
    assert math.isnan(gap_closed({"base": 0.3, "tuned": 0.3, "proxy": 0.5}, "proxy"))


def test_table_and_chart(tmp_path):
    table = markdown_table(SCORES)
    rows = table.splitlines()
    assert rows[2].startswith("| math | 0.200 | 0.800 | 0.500 | 0.700 | 0.650 | 83% | 75% |")
    assert rows[-1].startswith("| mean |") and len(rows) == 5
    write_outputs(SCORES, tmp_path, {"n": 2})
    png = (tmp_path / "results.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and width > 400 and height > 200


def test_metrics_table_lists_each_part_of_a_score():
    parts = {"refusal_harmful": 1.0, "over_refusal_benign": 0.25, "score": 0.875}
    scores = {"safety": {"metrics": {s: parts for s in ("base", "tuned", "expert", "proxy", "multi")}}}
    rows = metrics_table(scores).splitlines()
    assert rows[2] == "| safety: refusal_harmful | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |"
    assert rows[3] == "| safety: over_refusal_benign | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 |"
    assert len(rows) == 4


def test_end_to_end_on_the_tiny_family(tmp_path):
    scores = evaluate(n=4, split="test", out=tmp_path, max_new_tokens=6)
    assert set(scores) == {"math", "safety", "code"}
    for row in scores.values():
        assert all(0.0 <= row[s] <= 1.0 for s in ("base", "tuned", "expert", "proxy", "multi"))
    safety = scores["safety"]["metrics"]["tuned"]
    assert safety["score"] == (safety["refusal_harmful"] + 1 - safety["over_refusal_benign"]) / 2
    assert (tmp_path / "lm_eval_tasks" / "family_math.yaml").exists()


def test_weight_selection_maximises_the_worst_margin_to_each_proxy(tmp_path, monkeypatch):
    from composer.evaluation import select_weight

    # fake composed scores: uniform 0.4 trails every proxy by at most 0.1; 0.8 is better on math but worse on
    # code; more weight on math alone is best
    uniform = {0.4: {"math": 0.8, "safety": 1.0, "code": 0.85}, 0.8: {"math": 0.9, "safety": 1.0, "code": 0.6}}
    math_heavy = {"math": 0.88, "safety": 1.0, "code": 0.85}
    proxy = {"math": 0.9, "safety": 1.0, "code": 0.9}

    def fake_system(system, objective, weights=None):
        return ("proxy",) if system == "proxy" else tuple(weights.values())

    def fake_score(composer, objective, examples, out, n):
        if composer == ("proxy",):
            return proxy[objective]
        return math_heavy[objective] if composer == (0.6, 0.4, 0.4) else uniform[composer[0]][objective]

    monkeypatch.setattr(select_weight, "build_system", fake_system)
    monkeypatch.setattr(select_weight, "score", fake_score)
    weights = select_weight.candidates([0.8, 0.4], {"math": [0.4, 0.6]})
    assert weights == [dict.fromkeys(("math", "safety", "code"), w) for w in (0.8, 0.4)] + [
        {"math": 0.6, "safety": 0.4, "code": 0.4}
    ]
    result = select_weight.select(weights, n=2, out=tmp_path, max_new_tokens=4)
    assert result["chosen"] == {"math": 0.6, "safety": 0.4, "code": 0.4}
    assert [row["worst_margin"] for row in result["candidates"]] == pytest.approx([-0.3, -0.1, -0.05])
    table = select_weight.markdown(result)
    assert "| 0.4 | 0.800 | 1.000 | 0.850 | -0.100 |" in table
    assert "| math 0.6 / safety 0.4 / code 0.4 (chosen) | 0.880 | 1.000 | 0.850 | -0.050 |" in table


def refuse_to_run(*args, **kwargs):
    raise AssertionError("the command ran an evaluation before checking its input")


def run_main(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """The command's exit code and the lines it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("n", "message"),
    [
        ("0", "'0': give a whole number >= 1"),
        ("-3", "'-3': give a whole number >= 1"),
        ("two", "'two' is not a whole number"),
    ],
)
def test_a_count_that_is_not_positive_is_refused_before_any_work(n, message, tmp_path, monkeypatch, capsys):
    from composer.evaluation import evaluate, select_weight

    monkeypatch.setattr(evaluate, "evaluate", refuse_to_run)
    monkeypatch.setattr(select_weight, "select", refuse_to_run)
    for main in (evaluate.main, select_weight.main):
        for flag in ("--n", "--max-new-tokens"):
            code, lines = run_main(main, [flag, n, "--out", str(tmp_path)], capsys)
            assert code == 2 and lines[-1].endswith(f"error: argument {flag}: {message}")


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from composer.evaluation import evaluate, select_weight

    monkeypatch.setattr(evaluate, "evaluate", refuse_to_run)
    monkeypatch.setattr(select_weight, "select", refuse_to_run)
    (tmp_path / "file").write_text("")
    for main in (evaluate.main, select_weight.main):
        code, lines = run_main(main, ["--n", "1", "--out", str(tmp_path / "file" / "x")], capsys)
        assert code == 2 and len(lines) == 1
        assert lines[0].startswith(f"error: --out {tmp_path / 'file' / 'x'}: cannot write there (")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weights", "0.4", "nan"], "error: objective 'math': weight nan must be a finite number"),
        (["--grid", "code=0.4,inf"], "error: objective 'code': weight inf must be a finite number"),
        (["--weights"], "error: no candidate weights; give --weights W1 W2 ... or --grid OBJECTIVE=W1,W2 ..."),
        (["--weights", "0.4", "-0.5"], "error: objective 'safety': protected objective would get a negative weight"),
    ],
)
def test_candidate_weights_are_checked_before_any_evaluation(argv, message, tmp_path, monkeypatch, capsys):
    """Finite numbers only, and safety is protected as in the shipped recipe: no candidate may invert it."""
    from composer.evaluation import select_weight

    monkeypatch.setattr(select_weight, "build_system", refuse_to_run)
    monkeypatch.setattr(select_weight.GENERATORS["math"], "generate", refuse_to_run)
    code, lines = run_main(select_weight.main, [*argv, "--n", "2", "--out", str(tmp_path / "selection")], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(message)
    assert not (tmp_path / "selection").exists()  # a refused command leaves no output folder behind


def test_the_evaluated_objectives_are_the_shipped_recipes_guards_included():
    from composer.config import build_objectives
    from composer.evaluation.family import MULTI_WEIGHTS, multi_objectives, proxy_objective
    from tests.test_config import compose_run

    assert multi_objectives(MULTI_WEIGHTS) == build_objectives(compose_run("recipe=tiny"))
    assert proxy_objective("safety").protected


def test_the_evaluated_objectives_are_built_inside_a_callers_hydra_and_leave_it_as_it_was(tmp_path):
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from composer.evaluation.family import proxy_objective, recipe_objectives

    (tmp_path / "app.yaml").write_text("greeting: hello\n")
    recipe_objectives.cache_clear()  # compose the recipe here, not from an earlier test's cache
    with hydra.initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert proxy_objective("math", 0.3).weight == 0.3
        assert GlobalHydra.instance().is_initialized()
        assert hydra.compose("app").greeting == "hello"  # the caller's config search path, still in place


def test_a_user_error_during_a_command_is_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys):
    from composer.evaluation import evaluate, select_weight
    from experts.errors import UserInputError

    def refuse(*args, **kwargs):
        raise UserInputError("a prompt is 300 tokens but model 'tiny-base' has a context window of 256")

    monkeypatch.setattr(evaluate, "evaluate", refuse)
    monkeypatch.setattr(select_weight, "select", refuse)
    for main in (evaluate.main, select_weight.main):
        code, lines = run_main(main, ["--n", "1", "--out", str(tmp_path)], capsys)
        assert (code, lines) == (2, ["error: a prompt is 300 tokens but model 'tiny-base' has a context window of 256"])


def test_a_gap_that_is_not_there_reads_n_a_in_the_table():
    from composer.evaluation.family import SYSTEMS

    row = {**dict.fromkeys(SYSTEMS, 0.5), "gap_closed_proxy": math.nan, "gap_closed_multi": 0.25}
    table = markdown_table({"math": row})
    assert "| n/a | 25% |" in table and "nan" not in table
