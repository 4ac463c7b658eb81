"""The same seed and inputs give the same output across separate runs (processes), sampling included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sampled_run(run_dir: Path) -> list[str]:
    args = [
        "decoding=sample",
        "decoding.seed=11",
        "decoding.max_new_tokens=12",
        "prompts=[Tom has 5 apples. He buys 3 more. How many apples does Tom have now?,How do I feed my friend cat?]",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "composer", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["text"] for line in (run_dir / "completions.jsonl").read_text().splitlines()]


def test_seeded_sampling_is_identical_across_processes(tmp_path):
    first, second = sampled_run(tmp_path / "a"), sampled_run(tmp_path / "b")
    assert len(first) == 2 and first == second
