"""Weight guards: an objective may bound its weight, and a protected one (e.g. safety) refuses to be inverted.

A negative weight on a safety pair steers *towards* harm ("emulated disalignment"), so it needs an explicit,
recorded override. Guards are checked on the effective weight ``weight * schedule(t)`` over every step.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from experts.errors import UserInputError

if TYPE_CHECKING:
    from composer.objectives import Objective


def check_guards(objective: Objective, weight: float, overridden: Collection[str]) -> str | None:
    """None when ``weight`` keeps the objective's guards; a note naming the guard when an override lets it pass.

    Raises UserInputError when a guard is broken and not overridden.
    """
    low, high = objective.schedule.range()
    lowest, highest = min(weight * low, weight * high), max(weight * low, weight * high)
    problem = None
    if objective.bounds is not None:
        lo, hi = objective.bounds
        if (lo is not None and lowest < lo) or (hi is not None and highest > hi):
            problem = f"weight reaches [{lowest:g}, {highest:g}] outside its bounds [{lo}, {hi}]"
    if problem is None and objective.protected and lowest < 0:
        problem = f"protected objective would get a negative weight ({lowest:g})"
    if problem is None:
        return None
    if objective.name not in overridden:
        raise UserInputError(
            f"objective {objective.name!r}: {problem}; change the weight or schedule, or override this guard "
            f"explicitly with override_guards=[{objective.name}]"
        )
    return f"{objective.name}: {problem} (guard overridden)"


def check_overrides(overridden: Collection[str], objectives: Sequence[Objective]) -> None:
    """An override must name an objective of the recipe: a misspelt one would leave its guard in force."""
    unknown = sorted(set(overridden) - {o.name for o in objectives})
    if unknown:
        raise UserInputError(f"override_guards names unknown objective(s) {unknown}")
