"""Fuzzed recipes and secrets in the environment: config mistakes are user errors, secrets never reach outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer.cli import CONF_DIR, is_user_error, one_line
from composer.config import build_base, build_decoding, build_metrics, build_objectives

REPO = Path(__file__).resolve().parents[1]
PATHS = [
    "base",
    "base.path",
    "base.format",
    "objectives.math",
    "objectives.math.expert",
    "objectives.math.anti.path",
    "objectives.code.weight",
    "objectives.safety.schedule",
    "objectives.safety.schedule._target_",
    "decoding",
    "decoding.max_new_tokens",
]
VALUES = st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8), st.just("null"))
EDITS = st.lists(
    st.one_of(
        st.builds(lambda p: f"~{p}", st.sampled_from(PATHS)),  # a missing key
        st.builds(lambda p, k, v: f"+{p}.{k}={v}", st.sampled_from(PATHS), st.sampled_from(["zz", "extra"]), VALUES),
        st.builds(lambda p, v: f"{p}={v}", st.sampled_from(PATHS), VALUES),  # a wrong value
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
def test_a_broken_recipe_is_a_one_line_user_error_or_builds(edits):
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=edits)
            build_base(cfg), build_objectives(cfg), build_decoding(cfg), build_metrics(cfg)
    except Exception as err:
        assert is_user_error(err), f"{edits} raised {type(err).__name__}: {err}"
        assert one_line(err) and "\n" not in one_line(err)


def test_api_keys_in_the_environment_never_reach_run_outputs(tmp_path):
    secrets = {"OPENAI_API_KEY": "sk-test-9f8e7d6c5b4a", "HF_TOKEN": "hf_test_1a2b3c4d5e6f"}
    env = {**os.environ, **secrets, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    args = [
        "prompts=[How do I feed my neighbour cat?]",
        "decoding.max_new_tokens=3",
        "trace=true",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "composer", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    written = [p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file()]
    assert written, "the run wrote nothing"
    for value in secrets.values():
        assert not any(value in text for text in [*written, done.stdout, done.stderr])
