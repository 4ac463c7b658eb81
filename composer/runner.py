"""The run loop over a prompt list: one JSONL record per prompt, written and fsync'd as soon as it is finished.

A run killed at any point loses nothing: with ``resume=true`` the ids already in the output are skipped, and a
last line torn by the kill is cut off before the rest is appended. Each run also writes ``metrics.json`` (the
recipe's per-objective metrics over all records) into its job folder, which the sweep report reads.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from composer.config import (
    build_base,
    build_composer,
    build_decoding,
    build_draft,
    build_metrics,
    build_objectives,
    check_keys,
    schema_default,
)
from composer.decoding import DecodingConfig
from composer.engine import Completion, Composer
from composer.speculative import Draft
from experts.api import ApiModel
from experts.errors import UserInputError, check_whole, first_line

OUTPUT_NAME = "completions.jsonl"
METRICS_NAME = "metrics.json"
SETTINGS_SUFFIX = ".settings.json"  # beside the output: what its records were generated with, for resume
SWEEP_JOB = "sweep job"  # in the settings of a sweep's job: a job of another number never resumes it
# keys that may change between a run and its resume: where records go, how many at once, how fast, which
# prompts (checked record by record); the rest decides what a record holds
RESUMABLE_KEYS = (
    "prompts", "prompts_file", "output", "resume", "batch_size", "cuda_graphs", "compile", "speculative", "serve"
)  # fmt: skip


@dataclass(frozen=True)
class PromptItem:
    id: str | int
    prompt: str
    weights: dict[str, float] | None = None


def run_job(
    cfg: DictConfig,
    job_dir: Path,
    overrides: Sequence[str] = (),
    job: int | None = None,
    as_written: DictConfig | None = None,
) -> dict[str, Any]:
    """Compose, run every prompt not yet in the output, and write metrics.json; returns its content. ``job``
    is the job's number in a sweep, so that a job never resumes another job's output; ``as_written`` is the
    config before the command line made its paths absolute (hydra.job.chdir), which a resume compares."""
    started = time.monotonic()
    check_keys(cfg)
    build_base(cfg)
    objectives = build_objectives(cfg)  # a mistake in the recipe is named before anything is read or written
    items = load_prompts(list(cfg.prompts), cfg.prompts_file)
    output = Path(cfg.output) if cfg.output else job_dir / OUTPUT_NAME
    metrics = build_metrics(cfg)
    decoding = build_decoding(cfg)
    draft = build_draft(cfg)
    check_whole("batch_size", cfg.batch_size, minimum=1)
    if cfg.prompts_file and output.resolve() == Path(cfg.prompts_file).resolve():
        raise UserInputError(f"output {str(output)!r} is the prompts file; choose another output")
    recipe = {o.name: o.weight for o in objectives}
    settings = run_settings(cfg if as_written is None else as_written, job)
    done = prepare_output(output, cfg.resume, settings, items, recipe)
    composer = build_composer(cfg)
    finished = {record["id"] for record in done}
    todo = [item for item in items if item.id not in finished]
    check_prompts(composer, todo, decoding.max_new_tokens)
    asked = api_usage(composer)
    decoding_started = time.monotonic()
    try:
        new = run_prompts(composer, todo, decoding, output, cfg.batch_size, cfg.trace, len(done), draft)
    except KeyboardInterrupt:
        raise Interrupted(output) from None
    decoding_seconds = time.monotonic() - decoding_started
    records = done + new
    tokens = sum(sum(_each(r["tokens"])) for r in new)
    summary = {
        "status": "ok",
        "overrides": list(overrides),
        "metrics": {name: metric(*_samples(records)) for name, metric in metrics.items()},
        "higher_is_better": {name: bool(metric.higher_is_better) for name, metric in metrics.items()},
        "weights": {o.name: o.weight for o in composer.objectives},
        "schedules": {o.name: repr(o.schedule) for o in composer.objectives},
        "records": len(records),
        "output": str(output),
        "seconds": round(time.monotonic() - started, 3),
        # this run's prompts only (a resumed run's earlier records are not timed again)
        "tokens_per_s": round(tokens / decoding_seconds, 2) if new else None,
    }
    if asked:
        summary["api"] = {
            name: {
                "calls": calls,
                "prompt_tokens": prompt_tokens,
                "calls_per_token": round(calls / tokens, 4) if tokens else None,
                "prompt_tokens_per_token": round(prompt_tokens / tokens, 4) if tokens else None,
            }
            for name, (calls, prompt_tokens) in _asked_since(composer, asked).items()
        }
    if draft is not None:
        summary["speculative"] = {
            "gamma": draft.gamma,
            "gamma_schedule": draft.gamma_schedule,
            "mean_gamma": round(draft.stats.mean_gamma, 4),
            "acceptance_rate": round(draft.stats.acceptance_rate, 4),
            "tokens_per_round": round(draft.stats.tokens_per_round, 4),
        }
    write_metrics(job_dir, summary)
    return summary


def api_usage(composer: Composer) -> dict[str, tuple[int, int]]:
    """Each endpoint model's requests and prompt tokens so far (a black-box base costs calls, not FLOPs)."""
    return {m.spec.path: (m.usage.calls, m.usage.prompt_tokens) for m in composer.models if isinstance(m, ApiModel)}


def _asked_since(composer: Composer, before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    now = api_usage(composer)
    return {name: (calls - before[name][0], tokens - before[name][1]) for name, (calls, tokens) in now.items()}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during decoding: every finished record is on disk, and the message says how to finish."""

    def __init__(self, output: Path) -> None:
        super().__init__(
            f"interrupted; the finished records are in {str(output)!r}: add "
            f"{shlex.quote(f'output={output}')} resume=true to finish"
        )


def run_settings(cfg: DictConfig, job: int | None = None) -> dict[str, Any]:
    """What a record's content depends on: the config as written (interpolations such as ``${family:...}``
    unresolved, so that a checkout or a working folder may move) less ``RESUMABLE_KEYS``, the models'
    placement and the metrics (recomputed over every record); and the sweep job that writes it."""
    settings = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(settings, dict)
    for key in RESUMABLE_KEYS:
        settings.pop(key, None)
    models = [settings.get("base") or {}]
    for objective in (settings.get("objectives") or {}).values():
        objective.pop("metric", None)
        models += [objective.get("expert") or {}, objective.get("anti") or {}]
    for model in models:
        model.pop("device", None)
        model.pop("device_map", None)
    if job is not None:
        settings[SWEEP_JOB] = job
    return settings


def record_failure(job_dir: Path, overrides: Sequence[str], error: BaseException) -> None:
    """metrics.json for a job that raised, so that the sweep report can show which point failed and why."""
    message = f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__
    write_metrics(job_dir, {"status": "failed", "overrides": list(overrides), "error": message})


def write_metrics(job_dir: Path, summary: dict[str, Any]) -> None:
    """Written whole or not at all (a kill mid-write leaves the previous file), as the report reads it."""
    job_dir.mkdir(parents=True, exist_ok=True)
    partial = job_dir / f".{METRICS_NAME}.partial"
    partial.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, job_dir / METRICS_NAME)


def load_prompts(inline: list[str], path: str | None) -> list[PromptItem]:
    """Prompts from ``prompts_file`` when set (it replaces the recipe's inline prompts), else the inline list."""
    if path:
        return read_prompt_file(Path(path))
    if not inline:
        raise UserInputError("no prompts: give prompts=[...] or prompts_file=PATH (.txt or .jsonl)")
    empty = [i for i, p in enumerate(inline, start=1) if not p]
    if empty:
        raise UserInputError(f"prompts: prompt {empty[0]} (counting from 1) is empty; give it some text")
    return [PromptItem(id=i, prompt=p) for i, p in enumerate(inline, start=1)]


def read_prompt_file(path: Path) -> list[PromptItem]:
    """A .jsonl file of {"id", "prompt", "weights"?} records, or a text file with one prompt a line (id = line)."""
    if path.is_dir():
        raise UserInputError(f"prompts_file {str(path)!r} is a folder; give a .txt or .jsonl file")
    if not path.is_file():
        raise UserInputError(f"prompts_file {str(path)!r} not found")
    jsonl = path.suffix.lower() == ".jsonl"
    if not jsonl and path.suffix.lower() not in (".txt", ""):
        raise UserInputError(
            f"prompts_file {str(path)!r}: give a .jsonl file (a {{\"id\", \"prompt\"}} record a line) or a .txt "
            "file (a prompt a line)"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserInputError(f"prompts_file {str(path)!r} is not UTF-8 (byte {err.start}); save it as UTF-8") from None
    if not jsonl:
        items = [PromptItem(id=n, prompt=line) for n, line in enumerate(lines, start=1) if line.strip()]
    else:
        items, first_seen = [], {}
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            item = _jsonl_item(path, n, line)
            if item.id in first_seen:
                raise UserInputError(
                    f"{path.name} line {n}: duplicate id {item.id!r} (first on line {first_seen[item.id]})"
                )
            first_seen[item.id] = n
            items.append(item)
    if not items:
        raise UserInputError(f"prompts_file {str(path)!r} holds no prompts")
    return items


RECORD_KEYS = ("id", "prompt", "weights")


def _jsonl_item(path: Path, n: int, line: str) -> PromptItem:
    where = f"{path.name} line {n}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserInputError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected an object with 'id' and 'prompt'")
    if "id" not in data:
        raise UserInputError(f"{where}: missing 'id'; every record needs a unique id, so that a run can resume")
    if isinstance(data["id"], bool) or not isinstance(data["id"], str | int):
        raise UserInputError(f"{where}: id {data['id']!r} must be a string or a whole number")
    if not isinstance(data.get("prompt"), str) or not data["prompt"]:
        raise UserInputError(f"{where}: 'prompt' must be a non-empty string")
    for key in data.keys() - RECORD_KEYS:  # other fields (a gold answer, a category) are the user's own
        missing = [name for name in RECORD_KEYS if name not in data]  # a near name beside the real one is the user's
        near = difflib.get_close_matches(key.lower(), missing, n=1, cutoff=0.85)
        if near:
            raise UserInputError(f"{where}: unknown key {key!r}; did you mean {near[0]!r}?")
    weights = data.get("weights")
    if weights is not None and not isinstance(weights, dict):
        raise UserInputError(f"{where}: 'weights' must be an object of objective name -> number")
    return PromptItem(id=data["id"], prompt=data["prompt"], weights=weights)


def check_prompts(composer: Composer, items: Sequence[PromptItem], max_new_tokens: int) -> None:
    """Every prompt and its weights are checked before any decoding, so a bad one fails the run at once and
    is named by its id."""
    for item in items:
        try:
            composer.check([item.prompt], None if item.weights is None else [item.weights], max_new_tokens)
        except UserInputError as err:
            raise UserInputError(f"prompt {item.id!r}: {err}") from None


def prepare_output(
    output: Path,
    resume: bool,
    settings: dict[str, Any] | None = None,
    items: Sequence[PromptItem] = (),
    recipe: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The records already finished (with resume), after cutting off a last line torn by a kill. They must be
    this run's: written with the same ``settings`` (kept beside the output) for the same ``items``, each at
    the ``recipe``'s weights less those it sets itself."""
    if output.is_dir():
        raise UserInputError(f"output {str(output)!r} is a folder; give a file in it, e.g. {output / OUTPUT_NAME}")
    sidecar = output.with_name(output.name + SETTINGS_SUFFIX)
    if not output.exists():
        probe = output.resolve()  # a dangling link's target: the link itself stays
        try:  # fail now, not after the models load: create the file once to learn that it can be
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.touch()
            probe.unlink()
            if settings is not None:
                sidecar.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        except OSError as err:
            raise UserInputError(
                f"output {str(output)!r} cannot be written ({err.strerror or err}); choose another output"
            ) from None
        return []
    if not resume:
        raise UserInputError(
            f"output {str(output)!r} exists; pass resume=true to finish it (same settings), or choose another output"
        )
    if settings is not None and sidecar.is_file():
        try:
            before = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserInputError(
                f"{str(sidecar)!r} cannot be read; delete it to resume without comparing settings"
            ) from None
        _check_settings(output, before, settings)
    data = output.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with output.open("r+b") as f:  # the torn tail of a killed write: drop it, its prompt runs again
            f.truncate(len(complete))
            os.fsync(f.fileno())
    records = []
    for n, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserInputError(f"output {str(output)!r} line {n} is damaged; not resuming over it") from None
        if (
            not isinstance(record, dict)
            or not {"id", "prompt", "text"} <= record.keys()
            or isinstance(record["id"], bool)
            or not isinstance(record["id"], str | int)
        ):
            raise UserInputError(f"output {str(output)!r} line {n} is not a record of a run; choose another output")
        records.append(record)
    if items:
        _check_finished(output, records, items, recipe)
    return records


def _check_settings(output: Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    """A resumed output's records must not mix two configurations (a sweep sharing one output would)."""
    old, new = _flat(before), _flat(now)
    if SWEEP_JOB not in old or SWEEP_JOB not in new:  # a sweep job's output finished by a single run, or back
        old.pop(SWEEP_JOB, None)
        new.pop(SWEEP_JOB, None)
    changed = sorted(
        key
        for key in old.keys() | new.keys()
        if old.get(key) != new.get(key) and not _added_since(key, old.get(key, new.get(key)), old.keys() ^ new.keys())
    )
    if changed:
        key = changed[0]
        hint = (
            "; resume with the same settings, or choose another output (in a sweep, leave output unset: each job "
            "writes its own folder)"
        )
        if SWEEP_JOB in old and old.get(SWEEP_JOB) == new.get(SWEEP_JOB):  # the job's own folder, or its number's
            hint = (
                f"; sweep job {new[SWEEP_JOB]} stands for another point than when it was written (Hydra numbers "
                "a sweep's jobs by its values): resume with the same values, or give the sweep a new hydra.sweep.dir"
            )
        raise UserInputError(
            f"output {str(output)!r} was written with {key}={old.get(key)!r}, this run has {new.get(key)!r}"
            + (f" (and {len(changed) - 1} more setting(s))" if len(changed) > 1 else "")
            + hint
        )


def _added_since(key: str, value: Any, one_sided: set[str]) -> bool:
    """Is ``key`` a setting on one side only, at the schema's default: one that a newer version added, not one
    that was changed? (Outputs written before it resume.)"""
    return key in one_sided and value == schema_default(key)


def _check_finished(
    output: Path, records: Sequence[dict[str, Any]], items: Sequence[PromptItem], recipe: Mapping[str, float] | None
) -> None:
    """Each finished record must be one of this run's prompts, with its text and the weights this run gives
    it (the recipe's where its line sets none, when the recipe is known)."""
    by_id = {item.id: item for item in items}
    for record in records:
        item = by_id.get(record["id"])
        if item is None:
            raise UserInputError(
                f"output {str(output)!r} holds id {record['id']!r}, which is not among this run's prompts; "
                "resume with the same prompts, or choose another output"
            )
        weights = record.get("weights") or {}
        expected = {**(recipe or {}), **(item.weights or {})}
        same_weights = all(_same_weight(weights.get(k), v) for k, v in expected.items())
        if record["prompt"] != item.prompt or not same_weights:
            raise UserInputError(
                f"output {str(output)!r}: id {item.id!r} was generated for another prompt or other weights than "
                "this run gives it; resume with the same prompts, or choose another output"
            )


def _same_weight(recorded: Any, given: Any) -> bool:
    """Numbers by value (a file's 1 is the record's 1.0); anything else, a weight the check will refuse, as is."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (recorded, given))
    return math.isclose(recorded, given, rel_tol=1e-6) if numbers else recorded == given


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} as {'a.b': 1}, so that a difference is named by its config key."""
    if not isinstance(tree, dict) or not tree:
        return {prefix.removesuffix("."): tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def run_prompts(
    composer: Composer,
    items: Sequence[PromptItem],
    decoding: DecodingConfig,
    output: Path,
    batch_size: int,
    trace: bool,
    already_done: int = 0,
    draft: Draft | None = None,
) -> list[dict[str, Any]]:
    """Generate in batches; append each record to ``output`` (flushed and fsync'd) and print its text.

    With a ``draft``, decoding is speculative; the bar shows its acceptance rate so far."""
    records = []
    with (
        output.open("a", encoding="utf-8") as sink,
        tqdm(total=already_done + len(items), initial=already_done, unit="prompt") as bar,
    ):
        for batch in _batches(items, batch_size):
            for record in _generate(composer, batch, decoding, trace, draft):
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                records.append(record)
                texts = _each(record["text"])
                for k, text in enumerate(texts, start=1):
                    bar.write(f"[{record['id']}{f'#{k}' if len(texts) > 1 else ''}] {text}")
                bar.update()
            if draft is not None:
                stats = draft.stats
                bar.set_postfix(accepted=f"{stats.acceptance_rate:.2f}", per_round=f"{stats.tokens_per_round:.2f}")
    return records


def _generate(
    composer: Composer, batch: Sequence[PromptItem], decoding: DecodingConfig, trace: bool, draft: Draft | None
) -> Iterator[dict[str, Any]]:
    weights = [item.weights or {} for item in batch] if any(item.weights for item in batch) else None
    prompts = [item.prompt for item in batch]
    completions = composer.generate(prompts, decoding, weights=weights, trace=trace, draft=draft)
    per_prompt = decoding.num_return_sequences
    for i, item in enumerate(batch):
        yield _record(item, completions[i * per_prompt : (i + 1) * per_prompt], trace)


def _record(item: PromptItem, completions: list[Completion], trace: bool) -> dict[str, Any]:
    """One prompt's record; with num_return_sequences > 1, text, finish_reason, tokens and trace are lists."""
    pick: Callable[[list[Any]], Any] = (lambda values: values[0]) if len(completions) == 1 else list
    record = {
        "id": item.id,
        "prompt": item.prompt,
        "text": pick([c.text for c in completions]),
        "weights": completions[0].weights,
        "finish_reason": pick([c.finish_reason for c in completions]),
        "tokens": pick([len(c.token_ids) for c in completions]),
    }
    if completions[0].guards_overridden:
        record["guards_overridden"] = completions[0].guards_overridden
    if trace:
        record["trace"] = pick([[asdict(t) for t in c.trace or []] for c in completions])
    return record


def _batches(items: Sequence[PromptItem], size: int) -> Iterator[Sequence[PromptItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _samples(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(prompt, text) for every sample: with num_return_sequences > 1 a metric scores each, not the first."""
    pairs = [(r["prompt"], text) for r in records for text in _each(r["text"])]
    return [p for p, _ in pairs], [t for _, t in pairs]


def _each(value: Any) -> list[Any]:
    """A record field's samples: ``_record`` writes one sample's value bare, several as a list."""
    return value if isinstance(value, list) else [value]
