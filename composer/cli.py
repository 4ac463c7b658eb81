"""The command line, ``proxy-compose`` or ``python -m composer``: Hydra stays here, at the edge.

    proxy-compose [hydra overrides...]        run a recipe (default: tiny) on its prompts or a prompts file
    proxy-compose -m objectives.code.weight=0,0.5,1    sweep; every job writes metrics.json
    proxy-compose report SWEEP_DIR            CSV, Markdown table and Pareto plot of a sweep
    proxy-compose validate [overrides...]     compose and build every recipe without loading weights
    proxy-compose lm-eval [lm-eval args...]   lm-eval's command line, --model proxy-composer known to it
    proxy-compose serve [overrides...]        the recipe over the OpenAI HTTP API (serve.port=8000)

A user's mistake (a UserInputError or a config that does not compose) prints one ``error:`` line, exit code 2.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import transformers
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from composer import report
from composer.config import (
    CONF_DIR,
    build_base,
    build_decoding,
    build_draft,
    build_metrics,
    build_objectives,
    check_keys,
    model_nodes,
    register_configs,
)
from composer.guards import check_overrides
from composer.plan import Plan
from composer.runner import METRICS_NAME, Interrupted, record_failure, run_job
from composer.weights import row_weights
from experts.errors import UserInputError
from experts.loading import check_folder

USER_ERRORS = (UserInputError, HydraException, OmegaConfBaseException, yaml.YAMLError)  # a YAML file's syntax too
VALIDATE_USAGE = """usage: proxy-compose validate [recipe=NAME[,NAME...]] [hydra overrides...]

Compose every recipe (or those named), build its objectives, schedules, metrics and guards, and check that
local model folders exist, without loading weights. Prints ok or FAIL per recipe; exit code 1 if any failed."""
FAILED_JOBS: list[Path] = []  # the job folders (or metrics.json) of this sweep's failed jobs, for the exit code

register_configs()
transformers.utils.logging.disable_progress_bar()  # the run shows its own bar over prompts


def main() -> None:
    warnings.formatwarning = _one_line_warning
    args = sys.argv[1:]
    if args[:1] == ["report"]:
        sys.exit(_edge(lambda: report.main(args[1:])))
    if args[:1] == ["validate"]:
        if {"-h", "--help"} & set(args[1:]):
            print(VALIDATE_USAGE)
            sys.exit(0)
        sys.exit(_edge(lambda: validate(args[1:])))
    if args[:1] == ["lm-eval"]:
        sys.exit(_edge(lambda: _lm_eval(args[1:])))
    if args[:1] == ["serve"]:
        from composer.serving.command import main as serve

        sys.exit(_edge(lambda: serve(args[1:])))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach _edge instead of its multi-line printer
    sys.exit(_edge(_run_command))


def _lm_eval(args: list[str]) -> int:
    try:  # lm-eval is an extra: imported only when asked for
        from composer.evaluation import lm_eval_model
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("lm_eval"):
            raise
        raise UserInputError("proxy-compose lm-eval needs the eval extra: pip install 'proxy-composer[eval]'") from None
    return lm_eval_model.main(args)


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    """A warning as the command line shows it: one line, without the source line that raised it."""
    return f"warning: {message}\n"


def _run_command() -> int:
    run()
    return 1 if FAILED_JOBS else 0


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> list[float] | None:
    """One job. In a sweep, a job that raises is recorded in its metrics.json and the other jobs go on; a
    finished sweep job returns its metrics in objective order, the values that the Optuna sweeper optimises."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    as_written = copy.deepcopy(cfg)  # what a resume compares: the paths as typed, wherever the job runs
    if hydra_cfg.job.chdir:
        _from_launch_folder(cfg)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            summary = run_job(cfg, job_dir, overrides, as_written=as_written)
            print(f"{summary['records']} record(s) in {summary['output']}; metrics in {job_dir / METRICS_NAME}")
        except Interrupted as err:
            print(err, file=sys.stderr)
            sys.exit(130)
        except Exception as err:  # exit here: past this point Hydra would print an extra line
            if not is_user_error(err):
                raise
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)
        return None
    try:
        return list(run_job(cfg, job_dir, overrides, hydra_cfg.job.num, as_written)["metrics"].values())
    except Exception as err:  # any failure, OOM included: the report marks this sweep point
        kept = _status(job_dir / METRICS_NAME) == "ok"  # a finished run's record outlives a refused rerun
        if not kept:
            record_failure(job_dir, overrides, err)
        FAILED_JOBS.append(job_dir)  # a job in this process; those in workers are found by FailedJobs
        note = f" ({METRICS_NAME} of the run finished there is kept)" if kept else ""
        print(f"error: job {hydra_cfg.job.num} ({' '.join(overrides)}) failed: {one_line(err)}{note}", file=sys.stderr)
        return None


class FailedJobs(Callback):
    """Finds a sweep's failed jobs by the metrics.json each wrote, in the launching process: launchers that
    run jobs in worker processes (joblib) leave nothing else behind there, and the exit code would be 0.
    Hydra turns a callback's exception into a warning, so nothing here may raise: a metrics.json written
    during the sweep that cannot be read counts as a failure, and so does a job that Hydra started (its
    overrides.yaml written) and that wrote no metrics.json after it (a refused rerun keeps an older one)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.before = _written(Path(config.hydra.sweep.dir), config.hydra.get("output_subdir"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        before = getattr(self, "before", {})
        now = _written(Path(config.hydra.sweep.dir), config.hydra.get("output_subdir"))
        for path, written in now.items():
            if path.name == METRICS_NAME and before.get(path) != written and _status(path) != "ok":
                FAILED_JOBS.append(path)
            elif path.name == "overrides.yaml" and before.get(path) != written:
                metrics = path.parent.parent / METRICS_NAME
                if now.get(metrics, -1) < written and metrics not in FAILED_JOBS:
                    FAILED_JOBS.append(metrics)


def _from_launch_folder(cfg: DictConfig) -> None:
    """hydra.job.chdir=true runs the job in its run folder: the relative paths a user typed are read from
    where the command ran (a model path only where such a folder exists: otherwise it may be a hub id)."""
    for key in ("prompts_file", "output"):
        if cfg[key]:
            cfg[key] = to_absolute_path(cfg[key])
    for _, model in model_nodes(cfg):
        if OmegaConf.is_missing(model, "path"):
            continue  # building the config names the problem
        if not Path(model.path).is_absolute() and Path(to_absolute_path(model.path)).exists():
            model.path = to_absolute_path(model.path)


def _written(sweep: Path, hydra_subdir: str | None) -> dict[Path, int]:
    """Each metrics.json and each job's Hydra overrides.yaml under a sweep folder, with the time it was last
    written (ns)."""
    patterns = [METRICS_NAME] + ([f"{hydra_subdir}/overrides.yaml"] if hydra_subdir else [])
    found = {}
    try:
        for pattern in patterns:
            for path in sweep.rglob(pattern):
                found[path] = path.stat().st_mtime_ns
    except OSError:  # a folder that vanished or cannot be read: what was found so far
        pass
    return found


def _status(path: Path) -> str | None:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary.get("status") if isinstance(summary, dict) else None


def validate(overrides: list[str]) -> int:
    """Compose every recipe (those named by ``recipe=a,b`` if given; the user's on ``hydra.searchpath`` too) and
    build its objects without loading weights; local model folders must exist."""
    flags = [arg for arg in overrides if arg.startswith("-")]
    if flags:
        raise UserInputError(
            f"validate takes overrides only, not {flags[0]!r}: it checks every recipe at once (recipe=a,b picks some)"
        )
    parsed = OverridesParser.create().parse_overrides(overrides)
    chosen = [_names(o) for o in parsed if o.key_or_group == "recipe"]
    overrides = [text for text, o in zip(overrides, parsed, strict=True) if o.key_or_group != "recipe"]
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        known = loader.get_group_options("recipe", config_name="config", overrides=overrides)
        names = chosen[-1] if chosen else known
        unknown = [name for name in names if name not in known]
        if unknown:
            raise UserInputError(f"validate: no recipe named {unknown[0]!r}; have {known}")
        failures = 0
        for name in names:
            try:
                print(f"ok    {name}: {_describe(hydra.compose('config', overrides=[f'recipe={name}', *overrides]))}")
            except Exception as err:
                if not is_user_error(err):
                    raise
                failures += 1
                print(f"FAIL  {name}: {one_line(err)}")
    return 1 if failures else 0


def _names(override: Override) -> list[str]:
    """The recipes an override names: recipe=a, recipe=a,b (a sweep) or recipe=[a,b]."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    value = override.value()
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _describe(cfg: DictConfig) -> str:
    check_keys(cfg)
    base, objectives = build_base(cfg), build_objectives(cfg)
    build_decoding(cfg)
    build_draft(cfg)
    build_metrics(cfg)
    check_overrides(cfg.override_guards, objectives)
    row_weights(objectives, 1, None, list(cfg.override_guards))  # bounds and protected objectives
    plan = Plan(base, objectives)
    for spec in plan.specs:
        check_folder(spec)
    return f"{len(objectives)} objective(s) {[o.name for o in objectives]}, {len(plan.specs)} unique model(s)"


def one_line(err: BaseException) -> str:
    """The message of an error and its causes on one line, without omegaconf's full_key/object_type details."""
    parts: list[str] = []
    current: BaseException | None = err
    while current is not None:
        for line in str(current).splitlines():
            line = line.strip()
            if line.startswith("Config search path"):
                break
            if line and not line.startswith(("full_key:", "object_type=", "reference_type=")) and line not in parts:
                parts.append(line)
        current = current.__cause__
    text = " ".join(parts) or type(err).__name__
    if "Key 'recipe' not in 'RunConfig'" in text:  # Hydra names the file whose merge failed, not the recipe
        text += "; a recipe file must start with '# @package _global_' (its keys are the run's, not under recipe:)"
    if "is not a subclass of ObjectiveConfig" in text:  # '+objectives.NEW.weight=1', as Hydra's own hint says
        text += (
            "; an objective is added whole, from a file of conf/objectives or your own: "
            "+objectives@objectives.NAME=FILE, then its keys (objectives.NAME.weight=...)"
        )
    return text


def is_user_error(err: BaseException) -> bool:
    """A user's mistake: our own error, a config error, or any error that Hydra or omegaconf raised while reading
    the overrides (a malformed group override surfaces as a plain ValueError from inside Hydra)."""
    if isinstance(err, USER_ERRORS):
        return True
    frames = traceback.extract_tb(err.__traceback__)
    return isinstance(err, ValueError | TypeError | KeyError) and bool(frames) and _in_config_library(frames[-1])


def _in_config_library(frame: traceback.FrameSummary) -> bool:
    parts = Path(frame.filename).parts
    return "hydra" in parts or "omegaconf" in parts


def _edge(command: Callable[[], int]) -> int:
    try:
        return command()
    except KeyboardInterrupt:  # Ctrl-C in a sweep, or before decoding began: what is written stays
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`proxy-compose report DIR | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
