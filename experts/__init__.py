"""The model side: loading causal LMs, formatting prompts for them, and running them over cached batches."""

from experts.errors import UserInputError
from experts.loading import LoadedModel, ModelSpec, load
from experts.prompts import Chat, PromptFormat, Raw, Template
from experts.stream import ModelStream

__all__ = [
    "Chat",
    "LoadedModel",
    "ModelSpec",
    "ModelStream",
    "PromptFormat",
    "Raw",
    "Template",
    "UserInputError",
    "load",
]
