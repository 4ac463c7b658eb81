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
