"""Local lm-eval task files for the world's objectives whose metric the harness can express.

Math answers are checked by the harness itself: a regex filter takes the number after ``####`` and
``exact_match`` compares it with the truth. The data is written as JSON next to the task YAML, so nothing
is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from experts.family.world.example import Example

MATH_TASK = """\
task: family_math
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{truth}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {max_new_tokens}
  do_sample: false
filter_list:
  - name: answer
    filter:
      - function: regex
        regex_pattern: "#### (-?[0-9]+)"
        group_select: 0
      - function: take_first
metric_list:
  - metric: exact_match
"""


def write_math_task(folder: Path, examples: list[Example], max_new_tokens: int) -> str:
    """Writes the task and its data into ``folder``; returns the task name for ``simple_evaluate``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "family_math.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": e.prompt, "truth": e.truth}) for e in examples) + "\n")
    (folder / "family_math.yaml").write_text(MATH_TASK.format(data=data, max_new_tokens=max_new_tokens))
    return "family_math"
