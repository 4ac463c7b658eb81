"""Per-request weights: each row may carry its own weights, overriding the recipe's by objective name."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import torch

from composer.guards import check_guards
from composer.objectives import Objective, check_weight
from experts.errors import UserInputError

WeightOverride = Mapping[str, float] | Sequence[Mapping[str, float]] | None


def row_weights(
    objectives: Sequence[Objective], batch: int, override: WeightOverride, overridden_guards: Collection[str] = ()
) -> tuple[torch.Tensor, list[list[str]]]:
    """A ``(K, batch)`` tensor: the recipe's weights, replaced per row by any names given in ``override``;
    and, per row, the notes of guards that an explicit override let pass (guards that fail otherwise raise)."""
    if override is None or isinstance(override, Mapping):
        rows = [override or {}] * batch
    else:
        several = isinstance(override, Iterable) and not isinstance(override, str | bytes)
        rows = list(override) if several else [override]
        if not all(isinstance(row, Mapping) for row in rows):
            raise UserInputError(
                f"weights={override!r}: give a mapping {{objective: weight}}, or a list of them, one per prompt"
            )
        if len(rows) != batch:
            raise UserInputError(f"got {len(rows)} weight overrides for {batch} prompts; give one per prompt")
    table = torch.empty(len(objectives), batch, dtype=torch.float64)
    notes: list[list[str]] = []
    for b, row in enumerate(rows):
        try:
            notes.append(_fill(table[:, b], objectives, row, overridden_guards))
        except UserInputError as err:
            if len(rows) > 1 and row and not isinstance(override, Mapping):  # one row's own weights: say which
                raise UserInputError(f"weights of prompt {b} (counting from 0): {err}") from None
            raise
    return table, notes


def _fill(
    column: torch.Tensor, objectives: Sequence[Objective], row: Mapping[str, float], overridden_guards: Collection[str]
) -> list[str]:
    """One row's weights into ``column``; returns the notes of the guards its overrides let pass."""
    known = [o.name for o in objectives]
    unknown = sorted(set(row) - set(known))
    if unknown:
        raise UserInputError(f"weights name unknown objective(s) {unknown}; this recipe has {known}")
    notes = []
    for k, objective in enumerate(objectives):
        value = row.get(objective.name, objective.weight)
        check_weight(objective.name, value)
        note = check_guards(objective, value, overridden_guards)
        if note is not None:
            notes.append(note)
        column[k] = float(value)  # an int beyond int64 (2**63) is still a valid weight
    return notes
