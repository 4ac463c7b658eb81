"""Sweep report: a multirun folder's per-job metrics.json as a CSV, a Markdown table and a Pareto-front plot.

Every job folder counts: ``ok`` jobs with their per-objective metrics, ``failed`` jobs with their error, and
``missing`` jobs (a folder without metrics.json: the process died before writing it, e.g. killed for memory).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from composer.runner import METRICS_NAME  # noqa: E402
from experts.errors import UserInputError  # noqa: E402


@dataclass
class Job:
    name: str
    status: str  # ok | failed | missing | unreadable
    overrides: list[str]
    metrics: dict[str, float]
    higher_is_better: dict[str, bool]
    error: str = ""
    pareto: bool = False
    tokens_per_s: float | None = None  # decoding speed, so that a sweep over decoding settings compares speeds
    acceptance: float | None = None  # speculative decoding's acceptance rate


@dataclass
class Report:
    jobs: list[Job]
    objectives: list[str]
    higher_is_better: dict[str, bool]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="proxy-compose report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder (multirun/DATE/TIME)")
    parser.add_argument(
        "--out", type=Path, help="where to write report.csv, report.md, pareto.png (default: sweep_dir)"
    )
    args = parser.parse_args(argv)
    result = build_report(args.sweep_dir)
    out = args.out or args.sweep_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(result, out / "report.csv")
        (out / "report.md").write_text(markdown(result), encoding="utf-8")
        plot_pareto(result, out / "pareto.png")
    except OSError as err:
        raise UserInputError(f"--out {out}: cannot write there ({err.strerror or err}); give a folder") from None
    print(markdown(result))
    print(f"wrote {out / 'report.csv'}, {out / 'report.md'}, {out / 'pareto.png'}")
    return 0


def build_report(sweep_dir: Path) -> Report:
    if not sweep_dir.is_dir():
        raise UserInputError(f"sweep folder {str(sweep_dir)!r} not found")
    jobs = [_read_job(folder, sweep_dir) for folder in _job_folders(sweep_dir)]
    if not jobs:
        raise UserInputError(f"no jobs in {str(sweep_dir)!r}: expected a multirun folder of numbered job folders")
    objectives: list[str] = []
    higher: dict[str, bool] = {}
    for job in jobs:
        objectives += [name for name in job.metrics if name not in objectives]
        higher.update(job.higher_is_better)
    _mark_pareto(jobs, objectives, higher)
    return Report(jobs, objectives, higher)


def _job_folders(sweep_dir: Path) -> list[Path]:
    """Every job folder below the sweep's, however deep (``hydra.sweep.subdir=w${x}/${hydra.job.num}``)."""
    if (sweep_dir / METRICS_NAME).is_file():
        return [sweep_dir]
    found = {p.parent for p in sweep_dir.rglob(METRICS_NAME)} | {p.parent for p in sweep_dir.rglob(".hydra")}
    return sorted((p for p in found if p != sweep_dir and p.is_dir()), key=lambda p: _natural(p.relative_to(sweep_dir)))


def _natural(path: Path) -> list[tuple[int, int, str]]:
    """Numbered folders in number order (2 before 10), named ones after them."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def _read_job(folder: Path, sweep_dir: Path) -> Job:
    name = folder.relative_to(sweep_dir).as_posix() if folder != sweep_dir else folder.name
    path = folder / METRICS_NAME
    if not path.is_file():
        return Job(name, "missing", _hydra_overrides(folder), {}, {}, "no metrics.json: the job did not finish")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ValueError("not a job's record")
        metrics = {key: float(value) for key, value in data.get("metrics", {}).items()}
        higher = {key: bool(value) for key, value in data.get("higher_is_better", {}).items()}
        speed, speculative = data.get("tokens_per_s"), data.get("speculative", {})
        job = Job(
            name,
            data["status"],
            [str(o) for o in data.get("overrides", [])],
            metrics,
            higher,
            str(data.get("error", "")),
            tokens_per_s=None if speed is None else float(speed),
            acceptance=None if speculative.get("acceptance_rate") is None else float(speculative["acceptance_rate"]),
        )
    except (OSError, ValueError, TypeError, AttributeError) as err:
        return Job(name, "unreadable", _hydra_overrides(folder), {}, {}, f"metrics.json cannot be read ({err})")
    return job


def _hydra_overrides(folder: Path) -> list[str]:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [line.removeprefix("- ").strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def _mark_pareto(jobs: list[Job], objectives: list[str], higher: dict[str, bool]) -> None:
    """A job is on the front when no other finished job is at least as good on every metric and better on one."""
    scored = [job for job in jobs if job.status == "ok" and all(name in job.metrics for name in objectives)]

    def oriented(job: Job) -> list[float]:
        return [job.metrics[n] if higher.get(n, True) else -job.metrics[n] for n in objectives]

    for job in scored:
        mine = oriented(job)
        job.pareto = not any(
            all(o >= m for o, m in zip(theirs, mine, strict=True)) and theirs != mine
            for theirs in map(oriented, scored)
        )


def _row(report: Report, job: Job) -> list[str]:
    values = [f"{job.metrics[n]:.4g}" if n in job.metrics else "" for n in report.objectives]
    speed = [_number(job.tokens_per_s, ".1f"), *([_number(job.acceptance, ".2f")] if _speculative(report) else [])]
    return [job.name, job.status, " ".join(job.overrides), *values, *speed, "yes" if job.pareto else "", job.error]


def _header(report: Report, arrows: bool = True) -> list[str]:
    names = [
        f"{n} ({'higher' if report.higher_is_better.get(n, True) else 'lower'} is better)" if arrows else n
        for n in report.objectives
    ]
    speed = ["tokens/s", *(["acceptance"] if _speculative(report) else [])]
    return ["job", "status", "overrides", *names, *speed, "pareto", "error"]


def _speculative(report: Report) -> bool:
    return any(job.acceptance is not None for job in report.jobs)


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write_csv(report: Report, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(_header(report, arrows=False))
        writer.writerows(_row(report, job) for job in report.jobs)


def markdown(report: Report) -> str:
    header = _header(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in _row(report, job)) + " |" for job in report.jobs]
    return "\n".join(lines) + "\n"


def plot_pareto(report: Report, path: Path) -> None:
    """One panel per pair of objectives (a bar per job with a single objective); front points in red."""
    ok = [job for job in report.jobs if job.status == "ok"]
    pairs = list(combinations(report.objectives, 2))
    panels = max(len(pairs), 1)
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    if not pairs:
        _bars(axes[0][0], ok, report.objectives[0] if report.objectives else "")
    for ax, (x, y) in zip(axes.flat, pairs, strict=False):
        _scatter(ax, ok, x, y, report.higher_is_better)
    failed = len(report.jobs) - len(ok)
    fig.suptitle(f"{len(ok)} jobs" + (f", {failed} failed or missing (see report.md)" if failed else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scatter(ax: plt.Axes, jobs: list[Job], x: str, y: str, higher: dict[str, bool]) -> None:
    points = [job for job in jobs if x in job.metrics and y in job.metrics]
    front = sorted((job for job in points if job.pareto), key=lambda job: job.metrics[x])
    ax.scatter([j.metrics[x] for j in points], [j.metrics[y] for j in points], c="0.6", label="job")
    ax.plot([j.metrics[x] for j in front], [j.metrics[y] for j in front], "o-", c="tab:red", label="Pareto front")
    for job in points:
        ax.annotate(job.name, (job.metrics[x], job.metrics[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{x} ({'higher' if higher.get(x, True) else 'lower'} is better)")
    ax.set_ylabel(f"{y} ({'higher' if higher.get(y, True) else 'lower'} is better)")
    ax.legend(loc="best", fontsize=8)


def _bars(ax: plt.Axes, jobs: list[Job], name: str) -> None:
    ax.bar([job.name for job in jobs], [job.metrics.get(name, 0.0) for job in jobs], color="tab:blue")
    ax.set_xlabel("job")
    ax.set_ylabel(name or "no metric")
