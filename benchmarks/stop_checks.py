"""``python -m benchmarks.stop_checks``: the cost of looking for stop strings as a generation grows.

Each generated token asks whether the text so far holds a stop string. Decoding the whole text every time costs
time quadratic in the generation's length; ``composer.engine._has_stop`` decodes the last tokens only, falling
back to the whole text where that cannot vouch for its answer. Both run here over the same tokens: the first
4000 tokens of the README under the tiny family's tokenizer, one row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from transformers import AutoTokenizer

from composer.engine import _has_stop
from experts.family import MODELS_DIR

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4000, help="the generation's length")
    parser.add_argument("--stop", default="\n\n", help="the stop string looked for")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    tokens = tokenizer.encode(README.read_text(encoding="utf-8"), add_special_tokens=False)[: args.tokens]
    started = time.perf_counter()
    whole = [args.stop in tokenizer.decode(tokens[:k]) for k in range(1, len(tokens) + 1)]
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    tail = [_has_stop(tokenizer, tokens[:k], (args.stop,)) for k in range(1, len(tokens) + 1)]
    tail_s = time.perf_counter() - started
    # a generation stops at the first find, so only the first find has to agree
    assert (True in tail and tail.index(True)) == (True in whole and whole.index(True)), "the checks disagree"
    print(f"{len(tokens)} stop checks of one row: whole text {whole_s:.2f} s, last tokens first {tail_s:.2f} s")


if __name__ == "__main__":
    main()
