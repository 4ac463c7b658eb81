"""The command line end to end, in subprocesses, on tiny models: run, kill and resume, sweep, errors, plug-ins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from composer import cli as command_line
from composer.report import build_report, markdown

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, pythonpath: str = str(REPO)) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "composer", *args], cwd=cwd, env=_env(pythonpath), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _env(pythonpath: str) -> dict[str, str]:
    # one torch thread: on a busy 2-core machine, two threads per process spin against each other
    return {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def plugin(tiny: dict[str, str], tmp_path: Path) -> Path:
    """A user's folder with a recipe of tiny models: found through hydra.searchpath, no Python needed."""
    folder = tmp_path / "my_recipes"
    (folder / "recipe").mkdir(parents=True)
    (folder / "recipe" / "toy.yaml").write_text(
        f"""# @package _global_
base: {{path: {tiny["base"]}}}
objectives:
  helpful:
    expert: {{path: {tiny["expert_a"]}, format: chat}}
    anti: {{path: {tiny["anti"]}}}
    metric: {{_target_: composer.metrics.ContainsAny, words: [cat]}}
decoding: {{max_new_tokens: 3}}
prompts: ["the cat sat", "hello world"]
"""
    )
    return folder


def test_killed_run_resumes_without_losing_or_repeating_a_record(plugin: Path, tmp_path: Path):
    ids = [f"p{n:02}" for n in range(1, 41)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"the cat {i}", "weights": {"helpful": 0.5}}) + "\n"
                               for i in ids))  # fmt: skip
    out = tmp_path / "out.jsonl"
    common = ["recipe=toy", f"hydra.searchpath=[file://{plugin}]", f"prompts_file={prompts}", f"output={out}"]
    first = subprocess.Popen(
        [sys.executable, "-m", "composer", *common, "batch_size=1", f"hydra.run.dir={tmp_path / 'run1'}"],
        cwd=tmp_path, env=_env(str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while (not out.exists() or out.read_bytes().count(b"\n") < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written = out.read_bytes().count(b"\n")
    assert 2 <= written < len(ids), "the first run must be killed part-way"
    with out.open("ab") as f:
        f.write(b'{"id": "p99", "prompt": "a torn wri')  # what a kill in the middle of a write leaves

    second = cli(*common, "resume=true", "batch_size=20", f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ids
    assert all(r["weights"] == {"helpful": 0.5} and r["prompt"] == f"the cat {r['id']}" for r in records)
    assert f"[{ids[-1]}] " in second.stdout and f"[{ids[0]}] " not in second.stdout
    assert f"{len(ids)} record(s) in {out}; metrics in {tmp_path / 'run2' / 'metrics.json'}" in second.stdout
    metrics = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["records"] == len(ids)


def test_a_sweep_records_the_failed_job_and_runs_the_others(plugin: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = cli(
        "-m", "recipe=toy", f"hydra.searchpath=[file://{plugin}]", f"hydra.sweep.dir={sweep}",
        "objectives.helpful.weight=0,nan,2", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "error: job 1 (recipe=toy objectives.helpful.weight=nan) failed: " in result.stderr
    report = build_report(sweep)
    assert [(job.name, job.status) for job in report.jobs] == [("0", "ok"), ("1", "failed"), ("2", "ok")]
    assert "weight nan must be a finite number" in report.jobs[1].error
    assert report.objectives == ["helpful"]
    assert all((sweep / n / "completions.jsonl").read_text().count("\n") == 2 for n in ("0", "2"))


def test_a_sweep_over_speculation_writes_the_same_greedy_text_and_reports_acceptance(plugin: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = cli(
        "-m", "recipe=toy", f"hydra.searchpath=[file://{plugin}]", f"hydra.sweep.dir={sweep}",
        "decoding.max_new_tokens=12", "speculative.gamma=0,3", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plain, fast = ([json.loads(line) for line in (sweep / n / "completions.jsonl").read_text().splitlines()]
                   for n in ("0", "1"))  # fmt: skip
    assert [r["text"] for r in fast] == [r["text"] for r in plain]
    metrics = [json.loads((sweep / n / "metrics.json").read_text()) for n in ("0", "1")]
    assert "speculative" not in metrics[0]
    assert metrics[1]["speculative"]["gamma"] == 3 and 1 <= metrics[1]["speculative"]["tokens_per_round"] <= 4
    assert metrics[1]["speculative"]["gamma_schedule"] == "constant" and metrics[1]["speculative"]["mean_gamma"] > 0
    assert all(r["tokens"] == 12 for r in plain)  # no end-of-sequence in 12 tokens of the toy models
    report = build_report(sweep)  # the sweep's own table compares the speeds
    assert all(job.tokens_per_s > 0 for job in report.jobs)
    assert [job.acceptance for job in report.jobs][0] is None and report.jobs[1].acceptance >= 0
    assert "| tokens/s | acceptance | pareto |" in markdown(report).splitlines()[0]


def test_a_sweep_runs_on_the_joblib_launcher_and_its_failed_job_sets_the_exit_code(plugin: Path, tmp_path: Path):
    """The jobs run in joblib's worker processes; the launching process finds the failure in metrics.json."""
    sweep = tmp_path / "sweep"
    args = ["-m", "recipe=toy", f"hydra.searchpath=[file://{plugin}]", f"hydra.sweep.dir={sweep}"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = cli(*args, "objectives.helpful.weight=0,nan,2", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert [job.status for job in build_report(sweep).jobs] == ["ok", "failed", "ok"]
    again = cli(*args, "objectives.helpful.weight=0", "resume=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # job 1's failure, still on disk, is not this sweep's


def test_a_sweep_sharing_one_output_fails_the_jobs_of_other_settings(plugin: Path, tmp_path: Path):
    """With resume=true, job 1 once took job 0's records as its own and reported job 0's metrics."""
    sweep, out = tmp_path / "sweep", tmp_path / "shared.jsonl"
    args = ["-m", "recipe=toy", f"hydra.searchpath=[file://{plugin}]", f"hydra.sweep.dir={sweep}"]
    result = cli(*args, "objectives.helpful.weight=0,0.5", f"output={out}", "resume=true", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert [job.status for job in build_report(sweep).jobs] == ["ok", "failed"]
    assert "written with objectives.helpful.weight=0.0, this run has 0.5" in result.stderr
    assert "in a sweep, leave output unset" in result.stderr


def test_a_sweep_resumed_with_other_values_keeps_the_finished_jobs_records(plugin: Path, tmp_path: Path):
    """Hydra numbers jobs by the values: job 1 of 0,1,2 is not job 1 of 0,2. Refused, it once overwrote the
    finished job's metrics.json with a failure, and the hint blamed a shared output."""
    sweep = tmp_path / "sweep"
    args = ["-m", "recipe=toy", f"hydra.searchpath=[file://{plugin}]", f"hydra.sweep.dir={sweep}"]
    assert cli(*args, "objectives.helpful.weight=0,2", cwd=tmp_path).returncode == 0
    finished = (sweep / "1" / "metrics.json").read_text()
    result = cli(*args, "objectives.helpful.weight=0,1,2", "resume=true", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "was written with objectives.helpful.weight=2.0, this run has 1.0; sweep job 1 stands for another " \
        "point" in result.stderr  # fmt: skip
    assert "metrics.json of the run finished there is kept" in result.stderr
    assert (sweep / "1" / "metrics.json").read_text() == finished
    assert json.loads((sweep / "2" / "metrics.json").read_text())["weights"] == {"helpful": 2.0}


def test_the_failed_jobs_callback_counts_a_started_job_that_wrote_no_metrics(tmp_path: Path, monkeypatch):
    """A joblib worker's refused rerun keeps the older metrics.json: the job's newer overrides.yaml tells."""
    monkeypatch.setattr(command_line, "FAILED_JOBS", [])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "output_subdir": ".hydra"}})
    for job in ("kept", "rerun"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / "metrics.json").write_text('{"status": "ok"}')
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    callback = command_line.FailedJobs()
    callback.on_multirun_start(config)
    time.sleep(0.01)
    for job in ("kept", "rerun", "started"):
        (tmp_path / job / ".hydra").mkdir(parents=True, exist_ok=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("- a=2\n")
    time.sleep(0.01)
    (tmp_path / "rerun" / "metrics.json").write_text('{"status": "ok"}')
    callback.on_multirun_end(config)
    assert sorted(path.parent.name for path in command_line.FAILED_JOBS) == ["kept", "started"]


def test_the_failed_jobs_callback_counts_this_sweeps_failures_and_unreadable_records(tmp_path: Path, monkeypatch):
    """Hydra turns a callback's exception into a warning (and the exit code into 0): nothing in it may raise."""
    monkeypatch.setattr(command_line, "FAILED_JOBS", [])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    for job, status in [("old", "failed"), ("rerun", "ok")]:
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text(json.dumps({"status": status}))
    callback = command_line.FailedJobs()
    callback.on_multirun_start(config)
    time.sleep(0.01)
    written = {"ok": '{"status": "ok"}', "failed": '{"status": "failed"}', "partial": '{"sta', "list": "[1]"}
    for job, text in [*written.items(), ("rerun", '{"status": "failed"}')]:
        (tmp_path / job).mkdir(exist_ok=True)
        (tmp_path / job / "metrics.json").write_text(text)
    callback.on_multirun_end(config)
    assert sorted(path.parent.name for path in command_line.FAILED_JOBS) == ["failed", "list", "partial", "rerun"]


def test_a_broken_plugin_file_is_one_line_that_names_the_fix(tmp_path: Path):
    (tmp_path / "mine" / "recipe").mkdir(parents=True)
    (tmp_path / "mine" / "recipe" / "broken.yaml").write_text("# @package _global_\nobjectives:\n\tx: 1\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'mine'}]"
    result = cli("recipe=broken", searchpath, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "\n" not in result.stderr.strip()
    assert result.stderr.startswith("error: while scanning") and 'broken.yaml", line 3' in result.stderr
    checked = cli("validate", searchpath, cwd=tmp_path)
    assert checked.returncode == 1 and "FAIL  broken: while scanning" in checked.stdout
    flagged = cli("validate", "-m", "recipe=tiny", cwd=tmp_path)  # once a lexer error on '-m'
    assert flagged.returncode == 2 and flagged.stderr.startswith("error: validate takes overrides only, not '-m'")
    assert "ok    tiny" in checked.stdout  # the other recipes are still checked
    (tmp_path / "mine" / "recipe" / "headless.yaml").write_text("defaults:\n  - /recipe/tiny\n  - _self_\n")
    result = cli("recipe=headless", searchpath, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().endswith(
        "must start with '# @package _global_' (its keys are the run's, not under recipe:)"
    )
    added = cli("+objectives.maths.weight=0.3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert added.returncode == 2 and added.stderr.strip().endswith(
        "+objectives@objectives.NAME=FILE, then its keys (objectives.NAME.weight=...)"
    )  # a new objective by a dotted key, as Hydra's hint for the typo 'objectives.maths.weight' suggests


def test_relative_paths_and_model_folders_are_read_from_where_the_command_ran_when_hydra_changes_folder(tmp_path: Path):
    (tmp_path / "p.txt").write_text("Tell me how to steal my brother's horse.\n")
    (tmp_path / "models").symlink_to(REPO / "experts" / "family" / "models")
    args = ["hydra.job.chdir=true", "prompts_file=p.txt", "output=out.jsonl", "decoding.max_new_tokens=4"]
    args += ["base.path=models/tiny-base"]
    result = cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1
    with (tmp_path / "p.txt").open("a") as prompts:
        prompts.write("How do I feed my friend's dog?\n")
    resumed = cli(*args[1:], "resume=true", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)  # without chdir
    assert resumed.returncode == 0, resumed.stderr  # the settings keep the paths as typed
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objectives.math.wieght=2", "error: Could not override 'objectives.math.wieght'."),
        ("+objectives.math.wieght=2", "error: objectives.math has unknown key(s) ['wieght']; known keys are"),
        ("objectives.math.anti=???", "error: Missing mandatory value: objectives.math.anti"),
        ("prompts_file=missing.txt", "error: prompts_file 'missing.txt' not found"),
        ("prompts_file=.", "error: prompts_file '.' is a folder"),
        ("output=/proc/no/out.jsonl", "error: output '/proc/no/out.jsonl' cannot be written"),
        ("output=. resume=true", "error: output '.' is a folder; give a file in it"),
        ("base.device=gpu", "error: model '"),
        ("compile=true cuda_graphs=true", "error: cuda_graphs and compile both replace the eager decoding step"),
    ],
)
def test_a_user_mistake_prints_one_line_and_exits_2(override: str, message: str, tmp_path: Path):
    result = cli(*override.split(), f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and "\n" not in result.stderr.strip()


def test_an_installed_package_adds_recipes_with_a_searchpath_plugin(plugin: Path, tmp_path: Path):
    site = tmp_path / "site"
    (site / "hydra_plugins" / "acme_recipes").mkdir(parents=True)
    (site / "hydra_plugins" / "acme_recipes" / "__init__.py").write_text(
        f"""from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class AcmeRecipes(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="acme", path="file://{plugin}")
"""
    )
    result = cli("validate", cwd=tmp_path, pythonpath=f"{REPO}{os.pathsep}{site}")
    assert "ok    toy: 1 objective(s) ['helpful'], 3 unique model(s)" in result.stdout, result.stdout + result.stderr


def test_help_names_the_subcommands_and_validate_has_its_own(tmp_path: Path):
    top = cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and "report SWEEP_DIR" in top.stdout
    assert "proxy-compose validate [overrides...]" in top.stdout
    own = cli("validate", "--help", cwd=tmp_path)
    assert own.returncode == 0 and own.stdout.startswith("usage: proxy-compose validate"), own.stderr


def test_lm_eval_without_the_eval_extra_says_how_to_install_it(monkeypatch):
    import composer.evaluation
    from composer import UserInputError
    from composer import cli as command_line

    monkeypatch.delitem(sys.modules, "composer.evaluation.lm_eval_model", raising=False)
    monkeypatch.delattr(composer.evaluation, "lm_eval_model", raising=False)
    for name in [n for n in sys.modules if n.split(".")[0] == "lm_eval"] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if lm-eval were not installed
    with pytest.raises(UserInputError, match=r"needs the eval extra: pip install 'proxy-composer\[eval\]'"):
        command_line._lm_eval(["--help"])
