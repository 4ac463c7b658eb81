"""Tiny Python functions written from a one-line description, graded by unit tests in the sandbox.

About forty families of templates (arithmetic, predicates, lists, strings, loops) vary in function name
and constant. The raw corpus holds the same functions as commented snippets, and question/answer posts
that explain a function in prose; only the instruction data answers a request with the code itself.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache

from experts.family.world.example import Example, sample_split
from experts.family.world.sandbox import run_tests

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = ("Write a function {signature} that {description}.",
             "Write a Python function {signature} that {description}.",
             "Define {signature} so that it {description}.")
INPUTS = {
    "x": ("(0)", "(3)", "(7)", "(-2)", "(10)"),
    "n": ("(1)", "(4)", "(6)"),
    "a, b": ("(2, 5)", "(9, 4)", "(3, 3)", "(-1, 6)"),
    "xs": ("([1, 2, 3])", "([5, 0, 5, 7])", "([4])", "([2, 9, 2, 1, 8])"),
    "s": ('("cat")', '("Hello")', '("ab")'),
    "s, t": ('("cat", "dog")', '("a", "bc")'),
}
FENCE = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Family:
    """Names may contain ``{w}`` (constant as a word); description and body may contain ``{k}``."""

    names: tuple[str, ...]
    args: str
    description: str
    body: str
    constants: tuple[int, ...] = ()


FAMILIES = (
    Family(("add_{w}", "plus_{w}", "increase_by_{w}"), "x", "returns x plus {k}", "return x + {k}",
           tuple(range(1, 10))),
    Family(("minus_{w}", "subtract_{w}", "decrease_by_{w}"), "x", "returns x minus {k}", "return x - {k}",
           tuple(range(1, 10))),
    Family(("times_{w}", "multiply_by_{w}", "scale_by_{w}"), "x", "returns x times {k}", "return x * {k}",
           tuple(range(2, 10))),
    Family(("mod_{w}", "remainder_{w}"), "x", "returns the remainder of x divided by {k}", "return x % {k}",
           tuple(range(2, 10))),
    Family(("div_{w}", "divide_by_{w}"), "x", "returns x divided by {k}, rounded down", "return x // {k}",
           tuple(range(2, 10))),
    Family(("square", "squared", "to_square"), "x", "returns x squared", "return x * x"),
    Family(("cube", "cubed", "to_cube"), "x", "returns x cubed", "return x * x * x"),
    Family(("is_even", "check_even", "even"), "x", "returns True if x is even", "return x % 2 == 0"),
    Family(("is_odd", "check_odd", "odd"), "x", "returns True if x is odd", "return x % 2 == 1"),
    Family(("is_positive", "check_positive", "positive"), "x", "returns True if x is greater than zero",
           "return x > 0"),
    Family(("above_{w}", "greater_than_{w}", "over_{w}"), "x", "returns True if x is greater than {k}",
           "return x > {k}", tuple(range(0, 10))),
    Family(("below_{w}", "less_than_{w}", "under_{w}"), "x", "returns True if x is less than {k}",
           "return x < {k}", tuple(range(0, 10))),
    Family(("is_{w}", "equals_{w}", "same_as_{w}"), "x", "returns True if x equals {k}", "return x == {k}",
           tuple(range(0, 10))),
    Family(("at_most_{w}", "cap_{w}", "clamp_{w}"), "x", "returns x, but at most {k}", "return min(x, {k})",
           tuple(range(1, 10))),
    Family(("absolute", "abs_value", "magnitude"), "x", "returns the absolute value of x", "return abs(x)"),
    Family(("larger", "bigger", "max_of_two"), "a, b", "returns the larger of a and b", "return max(a, b)"),
    Family(("smaller", "lesser", "min_of_two"), "a, b", "returns the smaller of a and b", "return min(a, b)"),
    Family(("add", "add_two", "plus"), "a, b", "returns a plus b", "return a + b"),
    Family(("subtract", "minus", "difference"), "a, b", "returns a minus b", "return a - b"),
    Family(("multiply", "times", "product"), "a, b", "returns a times b", "return a * b"),
    Family(("distance", "gap", "abs_diff"), "a, b", "returns the absolute difference of a and b",
           "return abs(a - b)"),
    Family(("total", "sum_list", "add_all"), "xs", "returns the sum of the list xs", "return sum(xs)"),
    Family(("length", "count_items", "size"), "xs", "returns the length of the list xs", "return len(xs)"),
    Family(("first", "head", "first_item"), "xs", "returns the first item of the list xs", "return xs[0]"),
    Family(("last", "tail", "last_item"), "xs", "returns the last item of the list xs", "return xs[-1]"),
    Family(("reverse", "reversed_list", "backwards"), "xs", "returns the list xs reversed", "return xs[::-1]"),
    Family(("largest", "biggest", "max_item"), "xs", "returns the largest item of the list xs", "return max(xs)"),
    Family(("smallest", "tiniest", "min_item"), "xs", "returns the smallest item of the list xs",
           "return min(xs)"),
    Family(("count_{w}", "how_many_{w}", "number_of_{w}"), "xs", "returns how many times {k} appears in the list xs",
           "return xs.count({k})", tuple(range(0, 10))),
    Family(("add_{w}_each", "shift_by_{w}", "each_plus_{w}"), "xs",
           "returns a list with {k} added to each item of xs", "return [x + {k} for x in xs]", tuple(range(1, 10))),
    Family(("times_{w}_each", "scale_all_{w}", "each_times_{w}"), "xs",
           "returns a list with each item of xs times {k}", "return [x * {k} for x in xs]", tuple(range(2, 10))),
    Family(("keep_above_{w}", "filter_over_{w}", "only_above_{w}"), "xs",
           "returns the items of xs greater than {k}", "return [x for x in xs if x > {k}]", tuple(range(0, 10))),
    Family(("shout", "to_upper", "upper"), "s", "returns the string s in upper case", "return s.upper()"),
    Family(("whisper", "to_lower", "lower"), "s", "returns the string s in lower case", "return s.lower()"),
    Family(("repeat_{w}", "echo_{w}", "copies_{w}"), "s", "returns the string s repeated {k} times",
           "return s * {k}", tuple(range(1, 10))),
    Family(("initial", "first_letter", "first_char"), "s", "returns the first letter of the string s",
           "return s[0]"),
    Family(("join", "concat", "glue"), "s, t", "returns the strings s and t joined together", "return s + t"),
    Family(("sum_to", "triangle", "sum_up_to"), "n", "returns the sum of the numbers from 1 to n",
           "total = 0\n    for i in range(1, n + 1):\n        total += i\n    return total"),
    Family(("factorial", "fact", "product_up_to"), "n", "returns the product of the numbers from 1 to n",
           "result = 1\n    for i in range(1, n + 1):\n        result *= i\n    return result"),
    Family(("countdown", "down_from", "count_down"), "n", "returns the list of numbers from n down to 1",
           "return list(range(n, 0, -1))"),
)


@cache
def _expected_tests(name: str, code: str, args: str) -> str:
    """Unit tests whose expected values come from running the reference solution (cached: sampling for a
    small split redraws the same functions many times)."""
    namespace: dict[str, object] = {}
    exec(code, namespace)
    function = namespace[name]
    lines = []
    for call in INPUTS[args]:
        expected = eval(f"function{call}", {"function": function})
        lines.append(f"assert {name}{call} == {expected!r}")
    return "\n".join(lines)


def make(rng: random.Random) -> Example:
    family = rng.choice(FAMILIES)
    k = rng.choice(family.constants) if family.constants else 0
    name = rng.choice(family.names).format(w=NUMBER_WORDS[k])
    signature = f"{name}({family.args})"
    description = family.description.format(k=k)
    code = f"def {signature}:\n    {family.body.format(k=k)}"
    prompt = rng.choice(PHRASINGS).format(signature=signature, description=description)
    raw = rng.choice([
        f"# {signature} {description}\n{code}",
        f"# {signature} {description}\n{code}",
        f"Question: What does {signature} do?\nAnswer:\nIt {description}.",
    ])
    return Example(prompt=prompt, answer=code, raw=raw, truth=_expected_tests(name, code, family.args))


def generate(split: str, n: int, seed: int = 0) -> list[Example]:
    return sample_split(make, split, n, seed)


def extract_code(response: str) -> str:
    """The fenced block when there is one, otherwise the whole response."""
    match = FENCE.search(response)
    return match.group(1) if match else response


def score(examples: list[Example], responses: list[str], timeout_s: float = 2.0) -> dict[str, float]:
    """Fraction of responses whose code passes all the example's unit tests in the sandbox."""
    passed = sum(run_tests(extract_code(r), e.truth, timeout_s).passed
                 for e, r in zip(examples, responses, strict=True))
    pass_rate = passed / max(len(examples), 1)
    return {"pass_rate": pass_rate, "score": pass_rate}
