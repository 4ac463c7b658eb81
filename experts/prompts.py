"""How each model sees a prompt: raw text, its tokenizer's chat template, or a template string.

Formats are frozen dataclasses so that equal formats on equal weights are recognised as one stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from experts.errors import UserInputError


@dataclass(frozen=True)
class Raw:
    """The prompt's text as is, with the tokenizer's usual special tokens (e.g. BOS)."""

    def render(self, prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        return tokenizer(prompt)["input_ids"]


@dataclass(frozen=True)
class Template:
    """A template string with a ``{prompt}`` field, e.g. ``"Question: {prompt}\\nAnswer:"``."""

    template: str

    def __post_init__(self) -> None:
        if "{prompt}" not in self.template:
            raise UserInputError(f"prompt template {self.template!r} has no '{{prompt}}' field; add one")

    def render(self, prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        return tokenizer(self.template.replace("{prompt}", prompt))["input_ids"]


@dataclass(frozen=True)
class Chat:
    """The tokenizer's chat template, as one user turn with an optional system prompt."""

    system: str | None = None

    def render(self, prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        if not tokenizer.chat_template:
            raise UserInputError(
                f"tokenizer {tokenizer.name_or_path!r} has no chat template; use format 'raw' or a template string"
            )
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]


PromptFormat = Raw | Template | Chat
