"""The benchmark's baselines compute what they claim, so that its ratios compare like with like."""

import pytest
import torch

from benchmarks.naive import naive_generate
from benchmarks.report import ratios
from composer import Composer, DecodingConfig, Member, ModelSpec, Objective
from experts.loading import load
from experts.stream import left_pad


def test_naive_loop_gives_the_composers_greedy_tokens(tiny):
    objectives = [
        Objective("a", Member(ModelSpec(tiny["expert_a"])), Member(ModelSpec(tiny["anti"]))),
        Objective("b", Member(ModelSpec(tiny["expert_b"])), Member(ModelSpec(tiny["anti"])), weight=-0.5),
    ]
    composer = Composer(tiny["base"], objectives)
    composer.eos_ids = set()
    prompts = ["the cat sat on", "hello"]
    expected = [c.token_ids for c in composer.generate(prompts, DecodingConfig(max_new_tokens=8))]
    base = load(ModelSpec(tiny["base"]))
    ids, mask = left_pad([base.tokenizer(p)["input_ids"] for p in prompts], base.tokenizer.pad_token_id, base.device)
    pairs = [(load(o.expert.model).model, load(o.anti.model).model, o.weight) for o in objectives]
    assert naive_generate(base.model, pairs, ids, mask, 8).tolist() == expected


def test_ratios_leave_unmeasured_targets_empty():
    times = {"single:base": 2.0, "transformers:base": 1.0, "prompted:one-by-one": 3.0, "prompted:batched": 1.5}
    out = ratios(times)
    assert out["k0_over_transformers"] == 2.0 and out["prompted_speedup"] == 2.0
    assert out["overhead_k1"] is None and out["speculative_speedup_k3"] is None
    assert torch.isfinite(torch.tensor([v for v in out.values() if v is not None])).all()


def test_gpu_benchmark_runs_end_to_end_on_the_cpu(tmp_path):
    """The GPU script's every stage on tiny shapes, so that a lent GPU's minutes are not spent on its bugs."""
    import json
    import subprocess
    import sys

    args = ["--shapes", "tiny", "--device", "cpu", "--repeats", "1", "--cases", "8,4,2", "--out", str(tmp_path)]
    subprocess.run([sys.executable, "-m", "benchmarks.gpu", *args], check=True, capture_output=True)
    results = json.loads((tmp_path / "gpu-smoke.json").read_text())
    (cell,) = results["cells"]
    assert "error" not in cell and "error" not in results["same_tokens"]
    assert {"compose:k3", "compose:k3:graphs", "compose:k3:compiled", "naive:k3", "speculative:k3"} <= set(
        cell["tokens_per_s"]
    )
    assert all(0 < f < 1 for f in cell["fraction_of_floor"].values())
    assert "| 8, 4, 2 | compose:k3:graphs |" in (tmp_path / "gpu-smoke.md").read_text()


def test_speculation_breakdown_counts_rounds_and_bonus_forwards(tmp_path):
    """The cost breakdown's round count and bonus fraction agree with the draft's own statistics."""
    from benchmarks.models import family_set
    from benchmarks.speculation import markdown, measure

    family = family_set()
    objective = Objective("o", Member(ModelSpec(family.experts[0])), Member(ModelSpec(family.anti)))
    composer = Composer(family.base, [objective])
    composer.eos_ids = set()
    cell = measure(composer, ["Question: how many apples"], 12, [2], repeats=1, eager=composer, heuristic=2)
    row, heuristic = cell["rows"]
    assert heuristic["schedule"] == "heuristic" and heuristic["mean_gamma"] > 0
    assert row["tokens_per_round"] * row["rounds"] == pytest.approx(11)  # all but the prefill's token
    assert 0 <= row["bonus_fraction"] <= 1
    assert row["draft_ms_per_round"] > 0 and row["verify_ms_per_round"] > 0 and row["bound"] > 0
    assert row["speedup_over_eager_plain"] > 0  # --compile's reference column (here the same composer)
    table = markdown({"command": "c", "repeats": 1, "cells": [{"k": 1, "prompt": 4, "new": 12, "batch": 1, **cell}]})
    assert "eager plain" in table and "\n|---|---|---|---|---|---|---|\n" in table  # seven columns
    assert "| heuristic from 2 (mean " in table
