"""The sweep report: table rows for every job (failed and missing ones marked), the Pareto front, a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from composer.report import build_report, main
from experts.errors import UserInputError

HIGHER = {"safety": True, "length": False}


def write_job(sweep: Path, name: str, overrides: list[str], summary: dict | None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (job / "metrics.json").write_text(json.dumps({"overrides": overrides, **summary}))


def small_sweep(root: Path) -> Path:
    sweep = root / "multirun"
    for num, (safety, length) in enumerate([(0.2, 10.0), (0.6, 14.0), (0.5, 20.0), (0.9, 30.0)]):
        metrics = {"safety": safety, "length": length}
        write_job(
            sweep,
            str(num),
            [f"objectives.safety.weight={num}"],
            {"status": "ok", "metrics": metrics, "higher_is_better": HIGHER},
        )
    write_job(sweep, "4", ["objectives.safety.weight=nan"], {"status": "failed", "error": "UserInputError: weight nan"})
    write_job(sweep, "10", ["objectives.safety.weight=9"], None)  # killed before it wrote metrics.json
    return sweep


def test_the_front_keeps_the_jobs_no_other_job_beats_on_every_metric(tmp_path: Path):
    report = build_report(small_sweep(tmp_path))
    assert [job.name for job in report.jobs] == ["0", "1", "2", "3", "4", "10"]
    assert report.objectives == ["safety", "length"]
    assert [job.name for job in report.jobs if job.pareto] == ["0", "1", "3"]  # job 2 is beaten by job 1
    assert [job.status for job in report.jobs][4:] == ["failed", "missing"]


def test_report_writes_a_table_a_csv_and_a_png(tmp_path: Path):
    sweep = small_sweep(tmp_path)
    assert main([str(sweep)]) == 0
    table = (sweep / "report.md").read_text().splitlines()
    assert table[0].startswith("| job | status | overrides | safety (higher is better) | length (lower is better)")
    assert len(table) == 2 + 6
    assert "| 4 | failed | objectives.safety.weight=nan |" in table[6] and "UserInputError: weight nan" in table[6]
    assert "| 10 | missing |" in table[7]
    assert len((sweep / "report.csv").read_text().splitlines()) == 1 + 6
    png = (sweep / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_an_out_that_cannot_be_written_is_a_one_line_error(tmp_path: Path):
    sweep = small_sweep(tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserInputError, match="--out .*a_file: cannot write there"):
        main([str(sweep), "--out", str(tmp_path / "a_file")])


def test_an_unreadable_record_is_a_row_of_its_own_not_a_traceback(tmp_path: Path):
    """A metrics.json cut short by a kill, or not a job's record, once stopped the whole report."""
    sweep = small_sweep(tmp_path)
    write_job(sweep, "5", ["objectives.safety.weight=5"], None)
    (sweep / "5" / "metrics.json").write_text('{"status": "o')
    write_job(sweep, "6", ["objectives.safety.weight=6"], None)
    (sweep / "6" / "metrics.json").write_text("[1, 2]")
    report = build_report(sweep)
    rows = {job.name: job for job in report.jobs}
    assert rows["5"].status == rows["6"].status == "unreadable"
    assert rows["6"].overrides == ["objectives.safety.weight=6"] and "cannot be read" in rows["6"].error
    assert [job.name for job in report.jobs if job.pareto] == ["0", "1", "3"]
    assert main([str(sweep)]) == 0


def test_jobs_in_nested_subfolders_are_found_in_number_order(tmp_path: Path):
    """hydra.sweep.subdir=w${...}/${hydra.job.num} puts each job a level deeper."""
    sweep = tmp_path / "multirun"
    for folder, weight in [("w0/10", 10), ("w0/2", 2), ("w1/3", 3)]:
        summary = {"status": "ok", "metrics": {"safety": weight / 10}, "higher_is_better": {"safety": True}}
        write_job(sweep, folder, [f"w={weight}"], summary)
    assert [job.name for job in build_report(sweep).jobs] == ["w0/2", "w0/10", "w1/3"]


def test_metrics_are_written_whole_or_not_at_all(tmp_path: Path, monkeypatch):
    """A kill in the middle of writing metrics.json once left half a file, which the report could not read."""
    from composer.runner import write_metrics

    write_metrics(tmp_path, {"status": "ok", "records": 2})
    original = Path.write_text

    def killed_half_way(self: Path, text: str, *args, **kwargs) -> int:
        original(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_metrics(tmp_path, {"status": "failed", "error": "x" * 100})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"status": "ok", "records": 2}
