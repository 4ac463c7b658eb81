"""The evaluation's Markdown table and bar chart, and the gap-closed figure."""

from __future__ import annotations

import math
from pathlib import Path

from composer.evaluation.family import SYSTEMS


def gap_closed(scores: dict[str, float], system: str) -> float:
    """(system - base) / (tuned - base); NaN when tuning did not move the metric at all."""
    gap = scores["tuned"] - scores["base"]
    return (scores[system] - scores["base"]) / gap if gap else math.nan


def _percent(fraction: float) -> str:
    """A share of the gap; n/a where there is no gap to close (the tuned model scores as the base)."""
    return "n/a" if math.isnan(fraction) else f"{fraction:.0%}"


def markdown_table(scores: dict[str, dict[str, float]]) -> str:
    header = "| objective | " + " | ".join(SYSTEMS) + " | gap closed (proxy) | gap closed (multi) |"
    lines = [header, "|" + "---|" * (len(SYSTEMS) + 3)]
    for objective, row in scores.items():
        cells = [f"{row[s]:.3f}" for s in SYSTEMS] + [
            _percent(row["gap_closed_proxy"]),
            _percent(row["gap_closed_multi"]),
        ]
        lines.append(f"| {objective} | " + " | ".join(cells) + " |")
    mean = lambda key: sum(r[key] for r in scores.values()) / len(scores)  # noqa: E731
    lines.append(
        "| mean | "
        + " | ".join(f"{mean(s):.3f}" for s in SYSTEMS)
        + f" | {_percent(mean('gap_closed_proxy'))} | {_percent(mean('gap_closed_multi'))} |"
    )
    return "\n".join(lines)


def metrics_table(scores: dict[str, dict]) -> str:
    """Every metric an objective reports beside its score (safety: refusals of harmful and of benign prompts)."""
    lines = ["| objective: metric | " + " | ".join(SYSTEMS) + " |", "|" + "---|" * (len(SYSTEMS) + 1)]
    for objective, row in scores.items():
        names = [m for m in row.get("metrics", {}).get(SYSTEMS[0], {}) if m != "score"]
        for name in names:
            cells = " | ".join(f"{row['metrics'][s][name]:.3f}" for s in SYSTEMS)
            lines.append(f"| {objective}: {name} | {cells} |")
    return "\n".join(lines)


def bar_chart(scores: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(scores)
    width = 0.8 / len(SYSTEMS)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, system in enumerate(SYSTEMS):
        xs = [j + (i - (len(SYSTEMS) - 1) / 2) * width for j in range(len(objectives))]
        ax.bar(xs, [scores[o][system] for o in objectives], width, label=system)
    ax.set_xticks(range(len(objectives)), objectives)
    ax.set_ylabel("score (held-out)")
    ax.set_ylim(0, 1)
    ax.legend(ncols=len(SYSTEMS), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(scores: dict[str, dict], out: Path, settings: dict) -> str:
    """results.md (the gap table, then every metric) and results.png; returns the Markdown."""
    text = f"{markdown_table(scores)}\n\n{metrics_table(scores)}"
    settings_line = ", ".join(f"{k}={v}" for k, v in settings.items())
    (out / "results.md").write_text(f"Held-out evaluation ({settings_line})\n\n{text}\n")
    bar_chart(scores, out / "results.png")
    return text
