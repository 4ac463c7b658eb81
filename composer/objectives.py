"""An objective: a named (expert, anti-expert) pair whose logit difference is added with a weight."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from composer.schedules import Constant, Schedule
from experts.api import ApiSpec
from experts.errors import UserInputError
from experts.loading import ModelSpec
from experts.prompts import PromptFormat, Raw


@dataclass(frozen=True)
class Member:
    """A model seen through one prompt format: the unit that runs as one stream."""

    model: ModelSpec | ApiSpec
    format: PromptFormat = field(default_factory=Raw)

    def __post_init__(self) -> None:
        if not isinstance(self.format, PromptFormat):
            raise UserInputError(
                f"Member format {self.format!r}: give a prompt format, Raw(), Chat(system=...) or Template('...')"
            )


def as_member(value: Member | ModelSpec | ApiSpec | str, role: str) -> Member:
    """A model path or spec (an endpoint's too) seen raw; a Member as it is."""
    if isinstance(value, str | os.PathLike):
        value = ModelSpec(os.fspath(value))
    if isinstance(value, ModelSpec | ApiSpec):
        return Member(value)
    if not isinstance(value, Member):
        raise UserInputError(
            f"{role} is a {type(value).__name__}; give a model path, a ModelSpec, an ApiSpec or a Member"
        )
    return value


@dataclass(frozen=True)
class Objective:
    """``expert`` and ``anti`` may be given as model paths or ModelSpecs (seen raw) as well as Members."""

    name: str
    expert: Member
    anti: Member
    weight: float = 1.0
    schedule: Schedule = field(default_factory=Constant)
    bounds: tuple[float | None, float | None] | None = None  # allowed range of weight * schedule(t)
    protected: bool = False  # refuse negative effective weights unless overridden

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise UserInputError(f"objective name {name!r} must be letters, digits, '_' or '-'")
        object.__setattr__(self, "expert", as_member(self.expert, f"objective {name!r}: the expert"))
        object.__setattr__(self, "anti", as_member(self.anti, f"objective {name!r}: the anti-expert"))
        check_weight(name, self.weight)
        object.__setattr__(self, "weight", float(self.weight))  # a numpy scalar would not go into metrics.json
        if self.bounds is not None:
            if not isinstance(self.bounds, Sequence) or isinstance(self.bounds, str) or len(self.bounds) != 2:
                raise UserInputError(f"objective {name!r}: bounds {self.bounds!r} must be a pair [low, high]")
            object.__setattr__(self, "bounds", tuple(self.bounds))
            lo, hi = self.bounds
            for value in (v for v in self.bounds if v is not None):
                check_weight(f"{self.name}.bounds", value)
            if lo is not None and hi is not None and lo > hi:
                raise UserInputError(f"objective {self.name!r}: bounds [{lo}, {hi}] are reversed; put the lower first")


def check_weight(name: str, weight: float) -> None:
    numeric = not isinstance(weight, bool) and isinstance(weight, numbers.Real)  # numpy's scalars too
    try:
        finite = numeric and math.isfinite(float(weight))
    except OverflowError:  # an int beyond the largest float cannot become a weight
        finite = False
    if not finite:
        raise UserInputError(f"objective {name!r}: weight {weight!r} must be a finite number")
