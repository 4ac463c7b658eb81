"""``python -m composer.evaluation.select_weight``: the composition's per-objective weight, chosen on validation.

The held-out test split then measures the chosen weight once. The rule is the issue's target: the weight whose
composition comes closest to every single-objective proxy (the largest worst-case margin, multi - proxy),
ties broken by the mean composed score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from composer.evaluation.evaluate import score
from composer.evaluation.family import build_system
from experts.family import OBJECTIVES
from experts.family.world import GENERATORS


def select(weights: list[float], n: int, out: Path, max_new_tokens: int, seed: int = 0) -> dict:
    examples = {o: GENERATORS[o].generate("validation", n, seed) for o in OBJECTIVES}
    proxy = {o: score(build_system("proxy", o), o, examples[o], out, max_new_tokens) for o in OBJECTIVES}
    rows = []
    for weight in weights:
        multi = build_system("multi", OBJECTIVES[0], weight)
        composed = {o: score(multi, o, examples[o], out, max_new_tokens) for o in OBJECTIVES}
        margin = min(composed[o] - proxy[o] for o in OBJECTIVES)
        rows.append({"weight": weight, "multi": composed, "worst_margin": margin})
        print(f"weight {weight}: {composed} worst margin {margin:+.3f}", flush=True)
    best = max(rows, key=lambda r: (round(r["worst_margin"], 6), sum(r["multi"].values())))
    return {"split": "validation", "n": n, "proxy": proxy, "candidates": rows, "chosen": best["weight"]}


def markdown(result: dict) -> str:
    header = "| weight | " + " | ".join(f"{o} multi" for o in OBJECTIVES) + " | worst multi - proxy |"
    lines = [header, "|" + "---|" * (len(OBJECTIVES) + 2)]
    lines.append("| proxy (one objective) | " + " | ".join(f"{result['proxy'][o]:.3f}" for o in OBJECTIVES) + " | |")
    for row in result["candidates"]:
        mark = " (chosen)" if row["weight"] == result["chosen"] else ""
        cells = " | ".join(f"{row['multi'][o]:.3f}" for o in OBJECTIVES)
        lines.append(f"| {row['weight']}{mark} | {cells} | {row['worst_margin']:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 1.0])
    parser.add_argument("--n", type=int, default=100, help="validation prompts per objective")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("outputs/weight_selection"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = select(args.weights, args.n, args.out, args.max_new_tokens)
    (args.out / "selection.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "selection.md").write_text(f"Validation split, n={args.n}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
