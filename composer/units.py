"""Which of a plan's groups run as one forward per step, and where each group's rows sit in that forward.

A group is one set of weights running all its prompt formats as rows. Groups of one architecture (the
experts and anti-experts) are stacked into a single forward (``experts.stacking``); the base, and a draft
model that proposes tokens alone, run by themselves. A unit's batch is member-major, each member owning
``blocks * batch`` rows: its formats, then copies of its first format where it has fewer formats than
another member (the stack needs equal shares).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from experts.api import ApiModel, ApiStream
from experts.loading import LoadedModel
from experts.stacking import stack_groups, stacked
from experts.static_stream import StaticStream
from experts.stream import ModelStream
from experts.support import TopLogprobsStream


@dataclass
class Unit:
    groups: list[int]
    formats: list[int]  # formats per group
    stream: ModelStream

    @property
    def blocks(self) -> int:
        return max(self.formats)

    def layout(self, rows: Sequence[list[list[int]]], batch: int) -> list[list[int]]:
        """The unit's rows from each group's rows (format-major, ``batch`` per format)."""
        out: list[list[int]] = []
        for group, formats in zip(self.groups, self.formats, strict=True):
            out += rows[group] + rows[group][:batch] * (self.blocks - formats)
        return out

    def split(self, logits: torch.Tensor, batch: int) -> dict[int, torch.Tensor]:
        """Each group's own rows of the unit's output, format-major."""
        share = self.blocks * batch
        return {
            group: logits[i * share : i * share + formats * batch]
            for i, (group, formats) in enumerate(zip(self.groups, self.formats, strict=True))
        }

    def advance(self, tokens: torch.Tensor, batch: int) -> dict[int, torch.Tensor]:
        """Append ``tokens`` (B, n) to every row; each group's logits ``(R_g, n, V)``."""
        copies = len(self.groups) * self.blocks
        return self.split(self.stream.extend(tokens if copies == 1 else tokens.repeat(copies, 1)), batch)

    def retract(self, keep: torch.Tensor, appended: int) -> None:
        """Row b of every member keeps the first ``keep[b]`` of the last ``appended`` columns."""
        copies = len(self.groups) * self.blocks
        self.stream.retract(keep.repeat(copies), appended)

    def rows_of(self, index: torch.Tensor, batch: int) -> torch.Tensor:
        """The unit's row indices that keep, reorder or repeat prompts ``index`` of a batch of ``batch``."""
        offsets = torch.arange(len(self.groups) * self.blocks, device=index.device).unsqueeze(1) * batch
        return (offsets + index).flatten()


def partition(
    models: Sequence[LoadedModel], alone: Collection[int], stack: bool = True
) -> list[tuple[list[int], torch.nn.Module]]:
    """Groups that run as one forward, with the module that runs them: a stack of one architecture, or
    one group's own model (every group alone with ``stack`` off)."""
    if not stack:
        return [([g], models[g].model) for g in range(len(models))]
    alone = {*alone, *runs_alone(models)}
    units: list[tuple[list[int], torch.nn.Module]] = []
    for groups in stack_groups(models, alone):
        if len(groups) == 1:
            units.append((groups, models[groups[0]].model))
            continue
        try:
            units.append((groups, stacked([models[g] for g in groups])))
        except ValueError:  # an architecture the stacking cannot split: its members run one by one
            units += [([g], models[g].model) for g in groups]
    return units


def build_units(
    models: Sequence[LoadedModel],
    formats: Sequence[int],
    alone: Collection[int],
    stack: bool = True,
    graphed: int | None = None,
    compiled: bool = False,
    speculative: bool = False,
) -> list[Unit]:
    """``graphed``: fixed-shape streams with room for that many tokens after the prompt, whose one-token
    steps replay as CUDA graphs (``experts.static_stream``); None: streams whose caches grow, their steps
    after the prefill ``compiled`` with torch.compile or eager (``Composer`` refuses both), able to take
    columns back where ``speculative``."""
    units = []
    for groups, model in partition(models, alone, stack):
        loaded = models[groups[0]]
        if len(groups) == 1:
            stream = open_stream(loaded, compiled, speculative, graphed)
        else:
            stream = _model_stream(model, loaded.tokenizer.pad_token_id, compiled, speculative, graphed)
        units.append(Unit(groups, [formats[g] for g in groups], stream))
    return units


def runs_alone(models: Sequence[LoadedModel | ApiModel]) -> set[int]:
    """Groups that no stack can hold: an endpoint, and a model cut to its top-k (the cut is the stream's)."""
    return {g for g, m in enumerate(models) if isinstance(m, ApiModel) or m.spec.top_logprobs is not None}


def open_stream(
    loaded: LoadedModel | ApiModel, compiled: bool = False, rolls_back: bool = False, graphed: int | None = None
) -> ModelStream | StaticStream | ApiStream | TopLogprobsStream:
    """The stream that runs one model: over its endpoint, or its own forward, cut to ``top_logprobs`` if set."""
    if isinstance(loaded, ApiModel):
        return ApiStream(loaded)
    stream = _model_stream(loaded.model, loaded.tokenizer.pad_token_id, compiled, rolls_back, graphed)
    k = loaded.spec.top_logprobs
    return stream if k is None else TopLogprobsStream(stream, k)


def _model_stream(
    model: torch.nn.Module, pad: int, compiled: bool, rolls_back: bool, graphed: int | None
) -> ModelStream | StaticStream:
    """A model's (or a stack's) own forward: caches that grow, or fixed-shape ones graphed for ``graphed`` tokens."""
    if graphed is None:
        return ModelStream(model, pad, compiled, rolls_back=rolls_back)
    return StaticStream(model, pad, graphed)
