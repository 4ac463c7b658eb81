"""``python -m composer.evaluation.select_weight``: the composition's per-objective weights, chosen on validation.

The held-out test split then measures the chosen weights once. The rule is the issue's target: the weights whose
composition comes closest to every single-objective proxy (the largest worst-case margin, multi - proxy),
ties broken by the mean composed score. Candidates are uniform weights (``--weights``) and every combination of
per-objective values (``--grid math=0.4,0.6 code=0.4,0.6``).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

from composer.evaluation.command import output_folder, positive_int, user_errors
from composer.evaluation.evaluate import score
from composer.evaluation.family import build_system, multi_objectives
from composer.weights import row_weights
from experts.errors import UserInputError
from experts.family import OBJECTIVES
from experts.family.world import GENERATORS

Weights = dict[str, float]


def candidates(uniform: list[float], grid: dict[str, list[float]]) -> list[Weights]:
    """Uniform weights, then the product of the grid's per-objective values (an objective it omits: 0.4)."""
    out = [dict.fromkeys(OBJECTIVES, w) for w in uniform]
    values = [grid.get(o, [0.4]) for o in OBJECTIVES]
    out += [dict(zip(OBJECTIVES, combo, strict=True)) for combo in itertools.product(*values)] if grid else []
    return [w for i, w in enumerate(out) if w not in out[:i]]


def label(weights: Weights) -> str:
    values = set(weights.values())
    return f"{values.pop()}" if len(values) == 1 else " / ".join(f"{o} {w}" for o, w in weights.items())


def check_candidates(weights: list[Weights]) -> None:
    """Each candidate's weights pass the checks its Composer would make (finite, within the recipe's guards: safety
    is protected), before the minutes of evaluation that would end at the first Composer that refuses them."""
    if not weights:
        raise UserInputError("no candidate weights; give --weights W1 W2 ... or --grid OBJECTIVE=W1,W2 ...")
    for candidate in weights:
        row_weights(multi_objectives(candidate), 1, None)


def select(weights: list[Weights], n: int, out: Path, max_new_tokens: int, seed: int = 0) -> dict:
    check_candidates(weights)
    examples = {o: GENERATORS[o].generate("validation", n, seed) for o in OBJECTIVES}
    proxy = {o: score(build_system("proxy", o), o, examples[o], out, max_new_tokens) for o in OBJECTIVES}
    rows = []
    for candidate in weights:
        multi = build_system("multi", OBJECTIVES[0], candidate)
        composed = {o: score(multi, o, examples[o], out, max_new_tokens) for o in OBJECTIVES}
        margin = min(composed[o] - proxy[o] for o in OBJECTIVES)
        rows.append({"weights": candidate, "multi": composed, "worst_margin": margin})
        print(f"{label(candidate)}: {composed} worst margin {margin:+.3f}", flush=True)
    best = max(rows, key=lambda r: (round(r["worst_margin"], 6), sum(r["multi"].values())))
    return {"split": "validation", "n": n, "proxy": proxy, "candidates": rows, "chosen": best["weights"]}


def markdown(result: dict) -> str:
    header = "| weights | " + " | ".join(f"{o} multi" for o in OBJECTIVES) + " | worst multi - proxy |"
    lines = [header, "|" + "---|" * (len(OBJECTIVES) + 2)]
    lines.append("| proxy (one objective) | " + " | ".join(f"{result['proxy'][o]:.3f}" for o in OBJECTIVES) + " | |")
    for row in result["candidates"]:
        mark = " (chosen)" if row["weights"] == result["chosen"] else ""
        cells = " | ".join(f"{row['multi'][o]:.3f}" for o in OBJECTIVES)
        lines.append(f"| {label(row['weights'])}{mark} | {cells} | {row['worst_margin']:+.3f} |")
    return "\n".join(lines)


def _grid_entry(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    if name not in OBJECTIVES or not values:
        raise argparse.ArgumentTypeError(f"{text!r}: write OBJECTIVE=W1,W2 with OBJECTIVE one of {list(OBJECTIVES)}")
    try:
        return name, [float(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the weights must be numbers, comma-separated") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="*", default=[0.3, 0.4, 0.5, 0.6, 0.7, 1.0], help="uniform")
    parser.add_argument("--grid", type=_grid_entry, nargs="*", default=[], help="per objective: math=0.4,0.6 ...")
    parser.add_argument("--n", type=positive_int, default=100, help="validation prompts per objective")
    parser.add_argument("--max-new-tokens", type=positive_int, default=48)
    parser.add_argument("--out", type=Path, default=Path("outputs/weight_selection"))
    args = parser.parse_args(argv)
    with user_errors():
        weights = candidates(args.weights, dict(args.grid))
        check_candidates(weights)  # before --out is made: a refused command leaves nothing behind
        out = output_folder(args.out)
        result = select(weights, args.n, out, args.max_new_tokens)
        (out / "selection.json").write_text(json.dumps(result, indent=2))
        table = markdown(result)
        (out / "selection.md").write_text(f"Validation split, n={args.n}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
