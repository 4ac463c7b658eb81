"""Peak memory of one composition, measured in a child process of its own so that nothing else counts.

Run as ``python -m benchmarks.memory SET K PROMPT NEW BATCH``; prints one JSON object. The parent
starts one child per measurement.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import torch

from benchmarks.cases import Case, fixed_length, objectives, prompts
from benchmarks.models import ModelSet, family_set, random_set
from composer import Composer


def cache_bytes(composer_session) -> int:
    total = 0
    for unit in composer_session.units:
        for layer in unit.stream.cache.layers:
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def weight_bytes(composer: Composer) -> tuple[int, int]:
    """Bytes of parameters counted once per storage, and the number of distinct models in memory."""
    storages: dict[int, int] = {}
    models = {id(m.model) for m in composer.models}
    for loaded in composer.models:
        for p in loaded.model.parameters():  # a stacked member's parameters are views into the stack
            storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(storages.values()), len(models)


def peak_rss() -> int:
    """VmHWM: unlike getrusage's ru_maxrss, it is not inherited from the parent across fork and exec."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


@torch.inference_mode()
def measure(models: ModelSet, k: int, case: Case) -> dict:
    rss = psutil.Process().memory_info
    baseline = rss().rss
    composer = fixed_length(Composer(models.base, objectives(models, k)))
    session = composer.session(prompts(models, case), max_new_tokens=case.new)  # stacks the small models
    weights, distinct = weight_bytes(composer)
    composed = session.start()
    checkpoints = {}
    for step in range(case.new - 1):
        composed = session.extend(composed.logits[:, -1].argmax(-1, keepdim=True))
        if step + 2 in (case.new // 4, case.new):
            checkpoints[step + 2] = (rss().rss, cache_bytes(session))
    kv = cache_bytes(session)
    peak = peak_rss()
    (early, (rss_early, kv_early)), (late, (rss_late, kv_late)) = sorted(checkpoints.items())
    return {
        "set": models.name,
        "k": k,
        "case": case.__dict__,
        "interpreter_rss": baseline,
        "peak_rss": peak,
        "weights": weights,
        "distinct_models": distinct,
        "unique_specs": len(composer.plan.specs),
        "kv_cache": kv,
        "growth_per_step_beyond_cache": ((rss_late - rss_early) - (kv_late - kv_early)) / (late - early),
    }


def main() -> None:
    name, k, prompt, new, batch = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(1)
    models = family_set() if name == "family" else random_set(name)
    print(json.dumps(measure(models, k, Case(prompt, new, batch))))


if __name__ == "__main__":
    main()
