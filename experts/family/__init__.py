"""A seeded procedural world and a tiny Llama family trained on it, to show proxy-tuning in miniature.

The family shares one tokenizer: ``tiny-base`` (large, raw corpus only), ``tiny-small`` (small, raw corpus),
one ``tiny-expert-<objective>`` per objective (tiny-small tuned on that objective's instructions) and
``tiny-tuned`` (tiny-base tuned on all objectives), the reference that proxy-tuning should approach.
"""

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
OBJECTIVES = ("math", "safety", "code")
BASE, SMALL, TUNED = "tiny-base", "tiny-small", "tiny-tuned"


def expert_name(objective: str) -> str:
    return f"tiny-expert-{objective}"


def base_prompt(prompt: str) -> str:
    """The raw format the base can continue: the raw corpus holds question/answer posts written this way."""
    return f"Question: {prompt}\nAnswer:\n"
