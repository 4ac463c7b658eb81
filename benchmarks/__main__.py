"""``python -m benchmarks [--quick]``: every variant interleaved per cell, then peak memory in child processes.

Writes benchmarks/results/latest.json and latest.md (and a timestamped copy of the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from benchmarks.cases import Case, composer_runs, naive_runs, prompted_runs, prompts, transformers_run  # noqa: E402
from benchmarks.models import ModelSet, family_set, random_set  # noqa: E402
from benchmarks.report import markdown, ratios  # noqa: E402
from benchmarks.timing import interleaved  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FULL_CASES = [Case(p, n, b) for p, n in [(8, 256), (256, 8), (64, 64)] for b in (1, 8)]
LARGE_CASES = [Case(64, 64, 1)]  # the ~100M base: one cell and the K=3 variants only, it is slow on two cores
LARGE_VARIANTS = (
    *(f"single:{name}" for name in ("base", "anti", "expert0", "expert1", "expert2")),
    *("compose:k3", "naive:k3", "transformers:", "speculative:k3", "prompted:"),
)
FAMILY_CASES = [Case(p, n, b) for p, n in [(8, 240), (240, 8), (64, 64)] for b in (1, 8)]  # 256-token window
QUICK_CASES = [Case(8, 16, 1)]
MEMORY = [(name, 3, Case(64, 64, 8)) for name in ("random-10m", "family", "random-100m")]


def measure_cell(models: ModelSet, case: Case, repeats: int, only: tuple[str, ...] = ("",)) -> dict:
    """All variants (or those whose names start with one of ``only``) interleaved on one cell."""
    texts = prompts(models, case)
    runs, drafts = composer_runs(models, case, texts)
    runs["transformers:base"] = transformers_run(models, case, texts)
    runs |= naive_runs(models, case, texts) | prompted_runs(models, case, texts)
    runs = {name: run for name, run in runs.items() if name.startswith(only)}
    drafts = {name: draft for name, draft in drafts.items() if name in runs}
    times = interleaved(runs, repeats)
    return {
        "case": case.__dict__,
        "seconds": times,
        "tokens_per_s": {name: case.batch * case.new / t for name, t in times.items()},
        "ratios": ratios(times),
        "acceptance": {name: d.stats.acceptance_rate for name, d in drafts.items()},
        "tokens_per_round": {name: d.stats.tokens_per_round for name, d in drafts.items()},
    }


def memory_row(name: str, k: int, case: Case) -> dict:
    args = [sys.executable, "-m", "benchmarks.memory", name, str(k), str(case.prompt), str(case.new), str(case.batch)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one small cell, one repeat: a smoke run")
    parser.add_argument("--sets", nargs="*", help="model sets (random-10m, random-100m, family); default all found")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS} ({RESULTS / 'quick'} with --quick)")
    args = parser.parse_args()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)  # a smoke run keeps the committed results
    torch.set_num_threads(args.threads)
    names = args.sets or (["random-10m"] if args.quick else ["random-10m", "family", "random-100m"])
    repeats = 1 if args.quick else args.repeats
    results = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "threads": args.threads,
        "repeats": repeats,
        "sets": [],
        "memory": [],
    }
    for name in names:
        models = family_set() if name == "family" else random_set(name)
        if models is None:
            print(f"skipping {name}: not trained yet", file=sys.stderr)
            continue
        large = name == "random-100m" and not args.quick
        cases = (
            QUICK_CASES if args.quick else LARGE_CASES if large else FAMILY_CASES if name == "family" else FULL_CASES
        )
        cells = []
        for case in cases:
            started = time.perf_counter()
            cells.append(measure_cell(models, case, repeats, LARGE_VARIANTS if large else ("",)))
            print(f"{name} {case.label}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results["sets"].append({"name": name, "description": models.description, "cells": cells})
    memory = [("random-10m", 3, QUICK_CASES[0])] if args.quick else MEMORY
    results["memory"] = [memory_row(*m) for m in memory if m[0] != "family" or family_set()]
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1)
    (out / "latest.json").write_text(text)
    (out / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    (out / "latest.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
