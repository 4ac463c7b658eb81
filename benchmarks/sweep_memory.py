"""``python -m benchmarks.sweep_memory [SET]``: resident memory across an ablation sweep run in one process.

Hydra's basic launcher runs a multirun's jobs one after another in one process. A leave-one-out sweep over
K objectives builds K different stacks of small models; this runs such a sweep (each job: a composer, a few
generated tokens, the composer dropped) and prints the resident set after each job, next to the bytes of
the weights held, so that a stack kept after its job shows as growth. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import psutil  # noqa: E402
import torch  # noqa: E402

from benchmarks.cases import MAX_K, Case, fixed_length, objectives, prompts  # noqa: E402
from benchmarks.memory import weight_bytes  # noqa: E402
from benchmarks.models import RANDOM_SETS, family_set, random_set  # noqa: E402
from composer import Composer, DecodingConfig  # noqa: E402

CASE = Case(16, 4, 2)


def sweep(name: str) -> dict:
    models = family_set() if name == "family" else random_set(name)
    if models is None:
        raise SystemExit(f"model set {name!r} is not there yet (the tiny family is trained by experts.family.train)")
    every = objectives(models, MAX_K)
    texts = prompts(models, CASE)
    jobs = []
    for left_out in [None, *range(MAX_K)]:
        chosen = [o for i, o in enumerate(every) if i != left_out]
        composer = fixed_length(Composer(models.base, chosen))
        composer.generate(texts, DecodingConfig(max_new_tokens=CASE.new))
        weights, _ = weight_bytes(composer)
        del composer
        gc.collect()
        jobs.append(
            {
                "left_out": left_out,
                "rss_mb": psutil.Process().memory_info().rss / 2**20,
                "composition_weights_mb": weights / 2**20,
            }
        )
    return {"set": models.name, "description": models.description, "jobs": jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", nargs="?", default="random-100m", choices=["family", *RANDOM_SETS])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(sweep(args.set)))


if __name__ == "__main__":
    main()
