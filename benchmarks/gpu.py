"""``python -m benchmarks.gpu``: the composition at realistic shapes on one CUDA device, next to its floor.

Random-initialised Llama models are built in memory (no disk, no hub): a Llama-2-7b-shaped base and
TinyLlama-1.1B-shaped experts and anti-expert (the same 32000-token vocabulary), in bf16. Every variant's
tokens/s stands next to its floor: a decoding step must read each unique set of weights once, so the floor
is the batch over (those bytes / the device's measured copy bandwidth). The run also counts host syncs per
decoding step (``torch.cuda.set_sync_debug_mode``), and checks that CUDA streams and experts on another
device leave the tokens unchanged. ``--shapes tiny --device cpu`` is a smoke run for machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from benchmarks.cases import Case, fixed_length, naive_runs, objectives, prompts, transformers_run  # noqa: E402
from benchmarks.models import ModelSet, Shape, synthetic_tokenizer  # noqa: E402
from benchmarks.timing import interleaved  # noqa: E402
from composer import Composer, DecodingConfig, Draft  # noqa: E402
from experts.loading import ModelSpec, load, register  # noqa: E402

GB = 1e9
RESULTS = Path(__file__).parent / "results"


SHAPES = {  # (base, small): Llama-2-7b and TinyLlama-1.1B, sharing Llama-2's vocabulary
    "7b": (
        Shape(4096, 32, 32000, intermediate=11008, heads=32),
        Shape(2048, 22, 32000, intermediate=5632, heads=32, kv_heads=4),
    ),
    "tiny": (Shape(128, 4, 1024, intermediate=256, heads=4), Shape(64, 2, 1024, intermediate=128, heads=2)),
}
CASES = {"7b": [Case(64, 64, 1), Case(64, 64, 8), Case(256, 8, 8)], "tiny": [Case(8, 8, 1), Case(8, 8, 2)]}
EXPERTS = 3


def build(shape: Shape, seed: int, device: str, dtype: torch.dtype, tokenizer) -> LlamaForCausalLM:
    """A random Llama, initialised on ``device`` (equal seeds give equal weights on one kind of device)."""
    torch.manual_seed(seed)
    with torch.device(device):
        return LlamaForCausalLM(shape.config(tokenizer)).to(dtype)


def weight_bytes(path: str) -> int:
    return sum(p.numel() * p.element_size() for p in load(ModelSpec(path)).model.parameters())


def copy_bandwidth(device: str) -> float:
    """Bytes read plus bytes written per second by a large device-to-device copy (median of 10)."""
    source = torch.randn(2**26 if device == "cpu" else 2**30, device=device)  # 4 GiB on a GPU: beyond any cache
    target = torch.empty_like(source)
    times = []
    for _ in range(13):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / sorted(times[3:])[len(times[3:]) // 2]


def synchronize(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def variants(models: ModelSet, case: Case, texts: list[str], drafts: dict[str, Draft]) -> dict[str, Callable]:
    """Every variant's maker: name -> a function building the callable that generates the cell's tokens."""
    greedy = DecodingConfig(max_new_tokens=case.new)

    def run(*args, draft: Draft | None = None, **kwargs) -> Callable:
        composer = fixed_length(Composer(*args, **kwargs))
        return lambda: composer.generate(texts, greedy, draft=draft)

    k1, k3 = objectives(models, 1), objectives(models, EXPERTS)
    drafts["speculative:k3"] = Draft()
    return {
        "single:base": lambda: run(models.base),
        "single:base:graphs": lambda: run(models.base, cuda_graphs=True),
        "single:base:compiled": lambda: run(models.base, compile=True),
        "single:small": lambda: run(models.experts[0]),
        "single:small:graphs": lambda: run(models.experts[0], cuda_graphs=True),
        "transformers:base": lambda: transformers_run(models, case, texts),
        "compose:k1": lambda: run(models.base, k1),
        "compose:k1:graphs": lambda: run(models.base, k1, cuda_graphs=True),
        "compose:k3": lambda: run(models.base, k3),
        "compose:k3:graphs": lambda: run(models.base, k3, cuda_graphs=True),
        "compose:k3:compiled": lambda: run(models.base, k3, compile=True),
        "compose:k3:one-stream": lambda: run(models.base, k3, cuda_streams=False),
        "compose:k3:unstacked": lambda: run(models.base, k3, stack_models=False),
        "naive:k3": lambda: naive_runs(models, case, texts)["naive:k3"],
        "speculative:k3": lambda: run(models.base, k3, draft=drafts["speculative:k3"]),
    }


def floor_seconds(name: str, models: ModelSet, bandwidth: float) -> float:
    """A step's floor: each unique set of weights it needs read once at the copy bandwidth. The naive loop and
    speculation sample the same distribution as the composition, so they share its floor."""
    base, small = weight_bytes(models.base), weight_bytes(models.anti)
    if name.startswith(("single:base", "transformers:base")):
        return base / bandwidth
    if name.startswith("single:small"):
        return small / bandwidth
    k = 1 if name.startswith("compose:k1") else EXPERTS
    return (base + (k + 1) * small) / bandwidth  # k experts and the shared anti-expert


def measure_cell(
    models: ModelSet, case: Case, repeats: int, device: str, bandwidth: float, only: tuple[str, ...]
) -> dict:
    texts = prompts(models, case)
    drafts: dict[str, Draft] = {}
    runs = {name: make() for name, make in variants(models, case, texts, drafts).items() if not only or name in only}
    synced = {name: (lambda run=run: (run(), synchronize(device))) for name, run in runs.items()}
    times = interleaved(synced, repeats)
    floor = {name: floor_seconds(name, models, bandwidth) for name in runs}
    peaks = {}  # beyond the weights: caches, activations, logits
    if device != "cpu":
        for name in ("single:base", "transformers:base", "compose:k3", "compose:k3:graphs", "naive:k3"):
            if name in runs:
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                runs[name]()
                peaks[name] = (torch.cuda.max_memory_allocated() - before) / GB
    stats = drafts["speculative:k3"].stats
    return {
        "case": case.__dict__,
        "seconds": times,
        "tokens_per_s": {name: case.batch * case.new / t for name, t in times.items()},
        "floor_tokens_per_s": {name: case.batch / s for name, s in floor.items()},
        "fraction_of_floor": {name: (case.new * floor[name]) / t for name, t in times.items()},
        "acceptance": stats.acceptance_rate if "speculative:k3" in runs else None,
        "tokens_per_round": stats.tokens_per_round if "speculative:k3" in runs else None,
        "peak_gb": peaks,
    }


def syncs_per_step(models: ModelSet, device: str) -> dict:
    """Host syncs per decoding step, by the line that caused them: generate(n=17) minus generate(n=9), over 8."""
    texts = prompts(models, Case(16, 17, 2))
    k3 = objectives(models, EXPERTS)
    composers = {graphs: fixed_length(Composer(models.base, k3, cuda_graphs=graphs)) for graphs in (False, True)}
    out = {}
    for name, runs in {
        "compose:k3": [lambda n=n: composers[False].generate(texts, DecodingConfig(max_new_tokens=n)) for n in (9, 17)],
        "compose:k3:graphs": [
            lambda n=n: composers[True].generate(texts, DecodingConfig(max_new_tokens=n)) for n in (9, 17)
        ],
        "transformers:base": [transformers_run(models, Case(16, n, 2), texts) for n in (9, 17)],
    }.items():
        counts = [_syncs(run) for run in runs]
        per_step = {line: (counts[1][line] - counts[0][line]) / 8 for line in counts[1]}
        out[name] = {line: n for line, n in sorted(per_step.items()) if n}
    return out


def _syncs(call: Callable[[], object]) -> Counter:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(_where(w) for w in caught if "synchroniz" in str(w.message))


def _where(w: warnings.WarningMessage) -> str:
    parts = Path(w.filename).parts
    for root in ("composer", "experts", "benchmarks", "transformers", "torch"):
        if root in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(root) :]) + f":{w.lineno}"
    return f"{w.filename}:{w.lineno}"


def same_tokens(models: ModelSet, device: str) -> dict:
    """Greedy tokens of the composition with CUDA streams on and off, and with CUDA graphs on and off (in bf16,
    where the graphed step's attention over the whole static cache may round differently); on a GPU, the
    float64 checks of ``_float64_checks``."""
    texts = prompts(models, Case(16, 32, 2))
    config = DecodingConfig(max_new_tokens=32)
    k3 = objectives(models, EXPERTS)
    tokens = {}
    for name, kwargs in {"eager": {}, "one-stream": {"cuda_streams": False}, "graphs": {"cuda_graphs": True}}.items():
        composer = fixed_length(Composer(models.base, k3, **kwargs))
        tokens[name] = [t for c in composer.generate(texts, config) for t in c.token_ids]
    agree = sum(a == b for a, b in zip(tokens["eager"], tokens["graphs"], strict=True)) / len(tokens["eager"])
    out = {"cuda_streams_on_equals_off": tokens["eager"] == tokens["one-stream"], "graphs_tokens_agreeing": agree}
    if device != "cpu":
        out |= _float64_checks(device)
    return out


def _float64_checks(device: str) -> dict:
    """Tiny shapes in float64: all on ``device`` versus the small models on the CPU; and on ``device``, every
    step's composed logits with CUDA graphs versus without."""
    base_shape, small_shape = SHAPES["tiny"]
    tokenizer = synthetic_tokenizer(base_shape.vocab)
    sets = {}
    for where in (device, "cpu"):
        small = [build(small_shape, 20 + i, "cpu", torch.float64, tokenizer).to(where) for i in range(3)]
        paths = [register(f"x-{where}-{i}", m, tokenizer).path for i, m in enumerate(small)]
        base = register(f"x-base-{where}", build(base_shape, 10, "cpu", torch.float64, tokenizer).to(device), tokenizer)
        sets[where] = ModelSet(f"x-{where}", base.path, paths[0], tuple(paths[1:]), "")
    texts = prompts(sets[device], Case(8, 16, 3))
    texts[1] = " ".join(texts[1].split()[:3])  # a shorter row: left padding
    runs = {
        "device": Composer(sets[device].base, objectives(sets[device], 2)),
        "experts_on_cpu": Composer(sets["cpu"].base, objectives(sets["cpu"], 2)),
        "graphs": Composer(sets[device].base, objectives(sets[device], 2), cuda_graphs=True),
    }
    steps = {name: _stepwise(composer, texts, 16) for name, composer in runs.items()}
    return {
        name: {
            "max_abs_logit_difference": float((steps[name][1] - steps["device"][1]).abs().max()),
            "same_greedy_tokens": torch.equal(steps[name][0], steps["device"][0]),
        }
        for name in ("experts_on_cpu", "graphs")
    }


def _stepwise(composer: Composer, texts: list[str], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens (B, steps) and composed logits (B, steps, V) through the session, on the host."""
    session = composer.session(texts, max_new_tokens=steps)
    composed = session.start()
    tokens, logits = [], []
    for _ in range(steps):
        logits.append(composed.logits[:, -1].cpu())
        tokens.append(composed.logits[:, -1].argmax(-1))
        composed = session.extend(tokens[-1].unsqueeze(1))
    return torch.stack(tokens, 1).cpu(), torch.stack(logits, 1)


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"Command: `{results['command']}` on {env['device_name']} (torch {env['torch']}, transformers "
        f"{env['transformers']}); {results['description']}; copy bandwidth {env['copy_bandwidth_gb_s']:.0f} GB/s "
        f"(read + written); medians of {results['repeats']} interleaved repeats.",
        "",
        "| prompt, new, batch | variant | tok/s | floor tok/s | measured / floor | GPU GB beyond the weights |",
        "|---|---|---|---|---|---|",
    ]
    for cell in results["cells"]:
        if "error" in cell:
            lines.append(f"| | {cell['error']} | | | | |")
            continue
        case = cell["case"]
        label = f"{case['prompt']}, {case['new']}, {case['batch']}"
        for name, rate in cell["tokens_per_s"].items():
            peak = cell["peak_gb"].get(name)
            lines.append(
                f"| {label} | {name} | {rate:.1f} | {cell['floor_tokens_per_s'][name]:.1f} "
                f"| {cell['fraction_of_floor'][name]:.2f} | {'-' if peak is None else f'{peak:.2f}'} |"
            )
        if cell["acceptance"] is not None:
            lines.append(
                f"| {label} | speculative acceptance | {cell['acceptance']:.2f} "
                f"({cell['tokens_per_round']:.2f} tokens per round and row) | | | |"
            )
    lines += ["", "Host syncs per decoding step, by the line that asks for them:", ""]
    for name, lines_synced in results.get("syncs_per_step", {}).items():
        listed = ", ".join(f"`{line}` {n:g}" for line, n in lines_synced.items()) or "none"
        lines.append(f"- {name}: {listed}")
    lines += ["", f"Same tokens: {json.dumps(results.get('same_tokens'))}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="file stem of the JSON and Markdown (default gpu-latest; on the CPU gpu-smoke)")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--no-checks", action="store_true", help="timings only: skip the token and sync checks")
    parser.add_argument("--cases", nargs="*", help="cells as prompt,new,batch (default: the shapes' own)")
    args = parser.parse_args()
    args.name = args.name or ("gpu-smoke" if args.device == "cpu" else "gpu-latest")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.exit(2, "benchmarks.gpu: no CUDA device here; run it where one is, or pass --shapes tiny --device cpu\n")
    base_shape, small_shape = SHAPES[args.shapes]
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    started = time.perf_counter()
    tokenizer = synthetic_tokenizer(base_shape.vocab)
    base = register(f"{args.shapes}-base", build(base_shape, 0, args.device, dtype, tokenizer), tokenizer).path
    small = [
        register(f"{args.shapes}-small{i}", build(small_shape, 1 + i, args.device, dtype, tokenizer), tokenizer).path
        for i in range(4)
    ]
    models = ModelSet(args.shapes, base, small[0], tuple(small[1:]), "")
    description = (
        f"random Llama {args.shapes}: base {weight_bytes(base) / GB:.2f} GB, each of {EXPERTS} experts and the "
        f"shared anti-expert {weight_bytes(small[0]) / GB:.2f} GB, {dtype}".replace("torch.", "")
    )
    print(f"built in {time.perf_counter() - started:.0f} s: {description}", flush=True)
    bandwidth = copy_bandwidth(args.device)
    results = {
        "command": " ".join(["python -m benchmarks.gpu", *sys.argv[1:]]),
        "description": description,
        "repeats": args.repeats,
        "environment": {
            "device_name": torch.cuda.get_device_name() if args.device != "cpu" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "copy_bandwidth_gb_s": bandwidth / GB,
        },
        "cells": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [Case(*map(int, c.split(","))) for c in args.cases] if args.cases else CASES[args.shapes]
    stages: list[tuple[str, Callable[[], object]]] = []
    if not args.no_checks:
        stages.append(("same_tokens", lambda: same_tokens(models, args.device)))
    if args.device != "cpu" and not args.no_checks:
        stages.append(("syncs_per_step", lambda: syncs_per_step(models, args.device)))
    for case in cases:
        only = tuple(args.only or ())
        stages.append(
            (
                case.label,
                lambda case=case, only=only: measure_cell(models, case, args.repeats, args.device, bandwidth, only),
            )
        )
    for label, stage in stages:
        started = time.perf_counter()
        try:
            value = stage()
        except Exception as err:  # one failed stage must not lose the others' numbers
            value = {"error": f"{type(err).__name__}: {err}"}
        if label in ("same_tokens", "syncs_per_step"):
            results[label] = value
        else:
            results["cells"].append(value)
        shown = value if label in ("same_tokens", "syncs_per_step") or "error" in value else ""
        print(f"{label}: {time.perf_counter() - started:.0f} s {shown}", flush=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
