"""Deduplication: which unique weights run, with which prompt formats, for which objectives.

Built once per composer. Every member (base, each expert, each anti-expert) maps to a (group, format)
slot; a group is one set of weights and runs all its formats as one batched forward per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from composer.objectives import Member, Objective
from experts.errors import UserInputError
from experts.loading import ModelSpec
from experts.prompts import PromptFormat


@dataclass(frozen=True)
class Slot:
    group: int
    format: int


class Plan:
    def __init__(self, base: Member, objectives: Sequence[Objective]) -> None:
        names = [o.name for o in objectives]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserInputError(f"objective names must be unique; {duplicates} appear more than once")
        self.objectives = tuple(objectives)
        self.specs: list[ModelSpec] = []
        self.formats: list[list[PromptFormat]] = []
        self.base = self._slot(base)
        self.experts = [self._slot(o.expert) for o in objectives]
        self.antis = [self._slot(o.anti) for o in objectives]

    def _slot(self, member: Member) -> Slot:
        if member.model not in self.specs:
            self.specs.append(member.model)
            self.formats.append([])
        group = self.specs.index(member.model)
        if member.format not in self.formats[group]:
            self.formats[group].append(member.format)
        return Slot(group, self.formats[group].index(member.format))

    @property
    def stream_count(self) -> int:
        return sum(len(f) for f in self.formats)

    def explain(self, units: Sequence[Sequence[int]] | None = None) -> str:
        """A readable account of what runs per step, so users see what a recipe costs.

        ``units`` are the groups that run as one stacked forward (see ``composer.units``); None: one each.
        """
        units = units if units is not None else [[g] for g in range(len(self.specs))]
        lines = [
            f"{len(self.specs)} unique weights, {self.stream_count} streams, "
            f"{len(units)} forward(s) per step (naive: {1 + 2 * len(self.objectives)})"
        ]
        lines += [f"stacked as one forward: weights{list(u)}" for u in units if len(u) > 1]
        for g, (spec, formats) in enumerate(zip(self.specs, self.formats, strict=True)):
            lines.append(f"weights[{g}] {spec.path} ({spec.dtype})")
            for f, fmt in enumerate(formats):
                users = self._users(Slot(g, f))
                lines.append(f"  stream {fmt!r}: {', '.join(users)}")
        return "\n".join(lines)

    def _users(self, slot: Slot) -> list[str]:
        users = ["base"] if slot == self.base else []
        for objective, expert, anti in zip(self.objectives, self.experts, self.antis, strict=True):
            users += [f"{objective.name}.expert"] if slot == expert else []
            users += [f"{objective.name}.anti"] if slot == anti else []
        return users
