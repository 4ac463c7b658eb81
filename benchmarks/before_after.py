"""Two one-line measurements to run on two checkouts, for changes that have no switch to compare within one process.

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before python benchmarks/before_after.py before [speculative]
    PYTHONPATH=. python benchmarks/before_after.py after [speculative]

- rows that end: tiny-base + the 3 family objectives at 0.4 each, on 16 safety and 16 code test prompts,
  batches of 16, greedy, 96 new tokens, real end of sequence, so rows end at different steps;
- speculative rows: plain versus speculative composition on the family, K=1 and K=3, 64 + 64 tokens, batch 1
  and 8.

Each is the median of 3 timed runs (5 for the speculative rows) after one warm-up, with the variants
interleaved. A second argument ``speculative`` runs only the speculative rows.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from benchmarks.cases import Case, fixed_length, objectives, prompts  # noqa: E402
from benchmarks.models import family_set  # noqa: E402
from composer import DecodingConfig  # noqa: E402
from composer.engine import Composer  # noqa: E402
from composer.evaluation.family import member, proxy_objective  # noqa: E402
from composer.speculative import Draft  # noqa: E402
from experts.family import BASE, OBJECTIVES  # noqa: E402
from experts.family.world import GENERATORS  # noqa: E402


def medians(runs: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def rows_that_end(label: str) -> None:
    composer = Composer(member(BASE, chat=False), [proxy_objective(o, 0.4) for o in OBJECTIVES])
    texts = [e.prompt for o in ("safety", "code") for e in GENERATORS[o].generate("test", 16, 0)]
    config = DecodingConfig(max_new_tokens=96)
    out: list = []
    seconds = medians(
        {"all": lambda: out.extend(x for i in range(0, 32, 16) for x in composer.generate(texts[i : i + 16], config))}
    )["all"]
    lengths = [len(c.token_ids) for c in out[-32:]]
    print(f"{label}: rows that end: {seconds:.2f} s for 32 prompts; tokens per row {min(lengths)}-{max(lengths)}")


def speculative_rows(label: str) -> None:
    models = family_set()
    config = DecodingConfig(max_new_tokens=64)
    for k, batch in [(k, b) for k in (1, 3) for b in (1, 8)]:
        composer = fixed_length(Composer(models.base, objectives(models, k)))
        texts, draft = prompts(models, Case(64, 64, batch)), Draft()
        runs = {
            "plain": lambda c=composer, texts=texts: c.generate(texts, config),
            "draft": lambda c=composer, texts=texts, draft=draft: c.generate(texts, config, draft=draft),
        }
        t = medians(runs, repeats=5)
        print(
            f"{label}: speculative K={k}, batch {batch}: plain {batch * 64 / t['plain']:.0f} tok/s, speculative "
            f"{batch * 64 / t['draft']:.0f} tok/s ({t['plain'] / t['draft']:.2f}x), tokens per round "
            f"{draft.stats.tokens_per_round:.2f}, acceptance {draft.stats.acceptance_rate:.2f}"
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[2:] != ["speculative"]:
        rows_that_end(sys.argv[1])
    speculative_rows(sys.argv[1])
