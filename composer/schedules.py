"""Weight schedules: a multiplier m(t) of an objective's weight, over the index t of the generated token.

The effective weight at step t is ``weight * schedule(t)``. Each class validates itself on construction so
that a misconfigured schedule fails when the recipe is built, not halfway through a run, and reports the
range of its values so that weight guards can be checked for every step before decoding starts.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from experts.errors import UserInputError, check_whole


def _finite(owner: str, **values: float) -> None:
    for key, value in values.items():
        if not isinstance(value, numbers.Real) or not math.isfinite(value):  # numpy's scalars too
            raise UserInputError(f"{owner}: {key}={value!r} must be a finite number")


@dataclass(frozen=True)
class Constant:
    value: float = 1.0

    def __post_init__(self) -> None:
        _finite("constant schedule", value=self.value)

    def __call__(self, t: int) -> float:
        return self.value

    def range(self) -> tuple[float, float]:
        return (self.value, self.value)


@dataclass(frozen=True)
class Linear:
    """From ``start`` at t=0 to ``end`` at t=steps, then held at ``end``."""

    start: float = 0.0
    end: float = 1.0
    steps: int = 32

    def __post_init__(self) -> None:
        _finite("linear schedule", start=self.start, end=self.end)
        check_whole("linear schedule: steps", self.steps, minimum=1)

    def __call__(self, t: int) -> float:
        frac = min(t, self.steps) / self.steps
        return self.start + (self.end - self.start) * frac

    def range(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))


@dataclass(frozen=True)
class Cosine:
    """Half-cosine from ``start`` at t=0 to ``end`` at t=steps, then held at ``end``."""

    start: float = 1.0
    end: float = 0.0
    steps: int = 32

    def __post_init__(self) -> None:
        _finite("cosine schedule", start=self.start, end=self.end)
        check_whole("cosine schedule: steps", self.steps, minimum=1)

    def __call__(self, t: int) -> float:
        frac = min(t, self.steps) / self.steps
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def range(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))


@dataclass(frozen=True)
class Warmup:
    """Linear ramp from 0 to ``value`` over ``steps`` tokens, then constant: let the base open the answer."""

    value: float = 1.0
    steps: int = 8

    def __post_init__(self) -> None:
        _finite("warmup schedule", value=self.value)
        check_whole("warmup schedule: steps", self.steps, minimum=1)

    def __call__(self, t: int) -> float:
        return self.value * min(t, self.steps) / self.steps

    def range(self) -> tuple[float, float]:
        return (min(0.0, self.value), max(0.0, self.value))


@dataclass(frozen=True)
class Piecewise:
    """Step function: ``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    ``values`` has one more entry than ``boundaries``; e.g. boundaries=[4, 16], values=[0, 1, 0.5].
    """

    boundaries: tuple[int, ...] = ()
    values: tuple[float, ...] = field(default=(1.0,))

    def __post_init__(self) -> None:
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) != len(self.boundaries) + 1:
            raise UserInputError(
                f"piecewise schedule: {len(self.boundaries)} boundaries need {len(self.boundaries) + 1} values, "
                f"got {len(self.values)}"
            )
        _finite("piecewise schedule", **{f"values[{i}]": v for i, v in enumerate(self.values)})
        if any(not isinstance(b, int) or b < 0 for b in self.boundaries) or list(self.boundaries) != sorted(
            set(self.boundaries)
        ):
            raise UserInputError(
                f"piecewise schedule: boundaries={list(self.boundaries)} must be increasing whole numbers >= 0"
            )

    def __call__(self, t: int) -> float:
        index = sum(t >= b for b in self.boundaries)
        return self.values[index]

    def range(self) -> tuple[float, float]:
        return (min(self.values), max(self.values))


Schedule = Constant | Linear | Cosine | Warmup | Piecewise
