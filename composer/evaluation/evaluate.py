"""``python -m composer.evaluation``: the miniature reproduction of the paper's table on the tiny family.

For each objective it scores the base, the directly tuned model, the expert alone, the single-objective
proxy and the composition of all objectives on held-out prompts, and reports the share of the base-to-tuned
gap that proxy-tuning closes: (proxy - base) / (tuned - base).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from composer.decoding import DecodingConfig
from composer.engine import Composer
from composer.evaluation.command import output_folder, positive_int, user_errors
from composer.evaluation.family import SYSTEMS, build_system
from composer.evaluation.lm_eval_model import ComposerLM
from composer.evaluation.lm_eval_tasks import write_math_task
from composer.evaluation.report import gap_closed, write_outputs
from experts.family import OBJECTIVES
from experts.family.world import GENERATORS
from experts.family.world.example import Example


def score_math(composer: Composer, examples: list[Example], folder: Path, max_new_tokens: int) -> dict[str, float]:
    """Math goes through lm-evaluation-harness: its regex filter and exact_match express the metric."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task = write_math_task(folder, examples, max_new_tokens)
    results = simple_evaluate(
        model=ComposerLM(composer, batch_size=16, max_gen_toks=max_new_tokens),
        tasks=[task],
        task_manager=TaskManager(include_path=str(folder)),
        verbosity="ERROR",
    )
    accuracy = float(results["results"][task]["exact_match,answer"])
    return {"accuracy": accuracy, "score": accuracy}


def score_generated(
    composer: Composer, objective: str, examples: list[Example], max_new_tokens: int
) -> dict[str, float]:
    """Safety (refusals) and code (unit tests in the sandbox) are scored by the world's own metrics."""
    config = DecodingConfig(max_new_tokens=max_new_tokens)
    responses = []
    for start in range(0, len(examples), 16):
        batch = examples[start : start + 16]
        responses += [c.text for c in composer.generate([e.prompt for e in batch], config)]
    return GENERATORS[objective].score(examples, responses)


def measure(
    composer: Composer, objective: str, examples: list[Example], out: Path, max_new_tokens: int
) -> dict[str, float]:
    """The objective's metrics: ``score`` (the one the gap is measured on) and any parts it is made of."""
    if objective == "math":
        return score_math(composer, examples, out / "lm_eval_tasks", max_new_tokens)
    return score_generated(composer, objective, examples, max_new_tokens)


def score(composer: Composer, objective: str, examples: list[Example], out: Path, max_new_tokens: int) -> float:
    return measure(composer, objective, examples, out, max_new_tokens)["score"]


def evaluate(n: int, split: str, out: Path, max_new_tokens: int, seed: int = 0) -> dict[str, dict]:
    """Per objective: each system's score, the gaps closed, and ``metrics``, every metric of every system."""
    scores: dict[str, dict] = {}
    for objective in OBJECTIVES:
        examples = GENERATORS[objective].generate(split, n, seed)
        row: dict = {"metrics": {}}
        for system in SYSTEMS:
            metrics = measure(build_system(system, objective), objective, examples, out, max_new_tokens)
            row[system], row["metrics"][system] = metrics["score"], metrics
            print(f"{objective:>7} {system:>7}: {metrics}", flush=True)
        row["gap_closed_proxy"] = gap_closed(row, "proxy")
        row["gap_closed_multi"] = gap_closed(row, "multi")
        scores[objective] = row
    return scores


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=60, help="held-out prompts per objective")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--max-new-tokens", type=positive_int, default=48)
    parser.add_argument("--out", type=Path, default=Path("outputs/evaluation"))
    args = parser.parse_args(argv)
    with user_errors():
        out = output_folder(args.out)
        scores = evaluate(args.n, args.split, out, args.max_new_tokens)
        table = write_outputs(scores, out, {"n": args.n, "split": args.split})
        (out / "scores.json").write_text(json.dumps(scores, indent=2))
    print(table)


if __name__ == "__main__":
    main()
