"""Vocabulary agreement: composition adds logits token by token, so every model must index tokens alike."""

from __future__ import annotations

from collections.abc import Sequence

from experts.errors import UserInputError
from experts.loading import LoadedModel


def common_vocab_width(models: Sequence[LoadedModel]) -> int:
    """The logit width all models share, after slicing vocabularies padded beyond the base's.

    Refuses tokenizers that really differ, naming both models and the first differing token.
    """
    base = models[0]
    base_tokens = _tokens(base)
    for other in models[1:]:
        if other.tokenizer is base.tokenizer:
            continue
        tokens = _tokens(other)
        for index, (a, b) in enumerate(zip(base_tokens, tokens, strict=False)):
            if a != b:
                raise UserInputError(
                    f"models {base.spec.path!r} and {other.spec.path!r} have different tokenizers: token {index} "
                    f"is {a!r} in one and {b!r} in the other; use models from one tokenizer family"
                )
    width = min(m.vocab_width for m in models)
    if width < len(base_tokens):
        narrow = min(models, key=lambda m: m.vocab_width)
        raise UserInputError(
            f"model {narrow.spec.path!r} emits {width} logits but the tokenizer has {len(base_tokens)} tokens; "
            "its vocabulary does not cover the base's"
        )
    return width


def _tokens(model: LoadedModel) -> list[str]:
    tokenizer = model.tokenizer
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
