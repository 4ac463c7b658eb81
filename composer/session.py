"""The core primitive: advance every unique stream by the same tokens and return the composed logits.

The decode loop, the speculative loop and the transformers wrapper drive a ``Session``; positions, masks,
vocabulary slicing and -inf handling of decoding live here (scoring, one uncached forward over whole rows,
slices and promotes its logits in ``composer.scoring``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from einops import einsum

from composer.combine import combine
from composer.lanes import Lanes
from composer.plan import Plan, Slot
from composer.units import Unit, build_units
from experts.devices import to_device
from experts.errors import UserInputError
from experts.loading import LoadedModel
from experts.prompts import Raw
from experts.stream import check_fits


@dataclass(frozen=True)
class Composed:
    """Composed logits with the parts they were made of (for traces and speculative drafts).

    logits, base: ``(B, n, V)``; experts, antis: ``(K, B, n, V)``; weights: ``(K, B, n)``.
    """

    logits: torch.Tensor
    base: torch.Tensor
    experts: torch.Tensor
    antis: torch.Tensor
    weights: torch.Tensor

    def take(self, rows: torch.Tensor | slice = slice(None), positions: slice = slice(None)) -> Composed:
        """The same parts for some rows (B axis) and positions (n axis), whatever each part's leading axes."""
        return Composed(
            self.logits[rows][:, positions],
            self.base[rows][:, positions],
            self.experts[:, rows][:, :, positions],
            self.antis[:, rows][:, :, positions],
            self.weights[:, rows][:, :, positions],
        )

    def beside(self, other: Composed) -> Composed:
        """These rows followed by ``other``'s, at the same positions."""
        return Composed(
            torch.cat([self.logits, other.logits]),
            torch.cat([self.base, other.base]),
            torch.cat([self.experts, other.experts], 1),
            torch.cat([self.antis, other.antis], 1),
            torch.cat([self.weights, other.weights], 1),
        )

    def joined(self, later: Composed) -> Composed:
        """These positions followed by ``later``'s, for the same rows."""
        return Composed(
            torch.cat([self.logits, later.logits], 1),
            torch.cat([self.base, later.base], 1),
            torch.cat([self.experts, later.experts], 2),
            torch.cat([self.antis, later.antis], 2),
            torch.cat([self.weights, later.weights], 2),
        )


def render_rows(
    plan: Plan, models: Sequence[LoadedModel], prompts: Sequence[str], raw_ids: Sequence[list[int]] | None = None
) -> list[list[list[int]]]:
    """Per group, the token rows of every (format, prompt), format-major: row ``f * B + b``.

    ``raw_ids``, when given, are used as is for Raw formats, so that callers holding token ids (the
    transformers wrapper) are not subject to a decode/encode round trip.
    """
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise UserInputError(f"prompt {index} (counting from 0) is empty; give it at least one character")
    rows = []
    for model, formats in zip(models, plan.formats, strict=True):
        group = []
        for fmt in formats:
            if raw_ids is not None and isinstance(fmt, Raw):
                group += [list(ids) for ids in raw_ids]
            else:
                group += [fmt.render(p, model.tokenizer) for p in prompts]
        rows.append(group)
    return rows


class Session:
    """Decoding state for one batch of prompts: one stream per unique weights, one row per (format, prompt)."""

    def __init__(
        self,
        plan: Plan,
        models: Sequence[LoadedModel],
        vocab_width: int,
        rows: list[list[list[int]]],
        row_weights: torch.Tensor,
        max_new_tokens: int = 0,
        stack: bool = True,
        alone: Collection[int] = (),
        cuda_streams: bool = True,
        cuda_graphs: bool = False,
        compiled: bool = False,
        speculative: bool = False,
    ) -> None:
        """``rows[g]`` holds group g's token rows, format-major (see ``render_rows``); row_weights is (K, B).

        ``stack`` runs same-architecture groups (experts, anti-experts) as one forward (``composer.units``),
        except the base and the groups in ``alone``. ``cuda_streams`` runs each unit on its own CUDA stream.
        ``cuda_graphs`` allots every cache its ``max_new_tokens`` up front and replays one-token steps as
        CUDA graphs (for plain decoding: speculative rounds append more columns than tokens they keep).
        ``compiled`` runs every stream's steps after the prefill through torch.compile (``experts.compiled``).
        ``speculative`` sessions take columns back (``crop``, ``retract``), which sliding windows must allow.
        """
        self.plan = plan
        self.models = models
        self.vocab_width = vocab_width
        self.row_weights = row_weights
        self.batch = row_weights.shape[1]
        self.generated = 0  # columns appended to every stream since the prompt
        self.steps = torch.zeros(self.batch, dtype=torch.long)  # of those, each row's own tokens (see retract)
        self.started = False
        self.rows = rows
        for model, group_rows in zip(models, rows, strict=True):
            check_fits(model, [len(r) for r in group_rows], max_new_tokens)
        formats = [len(f) for f in plan.formats]
        graphed = max_new_tokens if cuda_graphs and max_new_tokens > 0 else None
        self.units = build_units(models, formats, {plan.base.group, *alone}, stack, graphed, compiled, speculative)
        self.device = models[plan.base.group].device
        self.lanes = Lanes([unit.stream.device for unit in self.units], cuda_streams)
        self._schedule_table = torch.empty(len(plan.objectives), 0, dtype=row_weights.dtype)

    def start(self) -> Composed:
        """Prefill all streams; the result predicts generated token 0, shape ``(B, 1, V)``."""
        self.generated = 0
        self.steps = torch.zeros(self.batch, dtype=torch.long)
        self.started = True

        def prefill(unit: Unit) -> dict[int, torch.Tensor]:
            return unit.split(unit.stream.start(unit.layout(self.rows, self.batch)).unsqueeze(1), self.batch)

        outputs = self.lanes.run({u: partial(prefill, unit) for u, unit in enumerate(self.units)})
        return self.compose(outputs, first_step=0)

    def extend(self, tokens: torch.Tensor) -> Composed:
        """Append ``tokens`` (B, n) to every stream; position j predicts row b's token ``steps[b] + j``."""
        if not self.started:
            raise UserInputError("extend before start: call session.start() first, it prefills the prompts")
        ids = isinstance(tokens, torch.Tensor) and tokens.dtype == torch.long and tokens.dim() == 2
        if not ids or tokens.shape[0] != self.batch:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise UserInputError(f"extend takes token ids as a long tensor of shape ({self.batch}, n), not {shape}")
        first_step = self.steps + 1
        self.advanced(tokens.shape[1])
        return self.compose(self.advance_units(dict.fromkeys(range(len(self.units)), tokens)), first_step)

    def advance(self, unit: int, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
        """Append ``tokens`` (B, n) to one unit's groups only; each group's raw logits ``(R_g, n, V)``.

        The speculative loop advances the draft's units token by token and the rest in one parallel
        forward, then composes; it owns the bookkeeping (``crop`` sets every stream's length again).
        """
        return self.units[unit].advance(tokens, self.batch)

    def advance_units(self, tokens: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """``advance`` for several units at once (unit -> its tokens), side by side where they share CUDA."""
        return self.lanes.run({unit: partial(self.advance, unit, fed) for unit, fed in tokens.items()})

    def advanced(self, n: int) -> None:
        """Count ``n`` columns appended to every stream (``extend`` does; ``advance`` leaves it to its caller)."""
        self.generated += n
        self.steps = self.steps + n

    def unit_of(self, group: int) -> int:
        return next(u for u, unit in enumerate(self.units) if group in unit.groups)

    def tail_logits(self, width: int) -> dict[int, torch.Tensor]:
        """Uncached forward over the whole rows: each group's logits at the last ``width`` positions."""
        outputs: dict[int, torch.Tensor] = {}
        for unit in self.units:
            outputs.update(unit.split(unit.stream.tail_logits(unit.layout(self.rows, self.batch), width), self.batch))
        return outputs

    def crop(self, generated: int) -> None:
        """Roll every stream back to ``generated`` appended tokens (transformers' assisted decoding rejecting
        candidates; speculative rounds use ``retract`` and ``crop_units``)."""
        if isinstance(generated, bool) or not isinstance(generated, int) or not 0 <= generated <= self.generated:
            raise UserInputError(f"crop({generated!r}): keep a whole number of the {self.generated} tokens appended")
        for unit in self.units:
            unit.stream.crop(generated)
        self.generated = generated
        self.steps = torch.full((self.batch,), generated, dtype=torch.long)

    def crop_units(self, units: Collection[int]) -> None:
        """Units that ran ahead of the others (a forward over more columns than ``generated`` counts) go back."""
        for unit in units:
            self.units[unit].stream.crop(self.generated)

    def retract(self, keep: torch.Tensor, appended: int) -> None:
        """Of the last ``appended`` columns, row b keeps its first ``keep[b]`` (B,): rows advance unevenly.

        The columns a row drops are masked out of its attention, and columns that no row keeps are cropped,
        so that each row continues exactly as if it alone had been cropped (speculative rejection per row).
        """
        for unit in self.units:
            unit.retract(keep, appended)
        self.generated -= appended - int(keep.max())
        self.steps = self.steps - (appended - keep.cpu())

    def select(self, index: torch.Tensor) -> None:
        """Keep, reorder or repeat prompts: ``index`` (B',) picks rows of the current batch."""
        index = torch.as_tensor(index)
        rows = index.tolist()
        whole = not index.is_floating_point() and not index.is_complex() and index.dtype != torch.bool
        if index.dim() != 1 or not whole or not all(0 <= i < self.batch for i in rows):
            raise UserInputError(f"select takes a tensor of row numbers in [0, {self.batch}), not {rows}")
        index = index.long()
        for unit in self.units:
            unit.stream.select(unit.rows_of(index, self.batch))
        self.rows = [  # format-major, as the streams' rows, so that a later start or tail_logits sees them
            [group[f * self.batch + i] for f in range(len(group) // self.batch) for i in rows] for group in self.rows
        ]
        self.row_weights = self.row_weights[:, index.to(self.row_weights.device)]
        self.steps = self.steps[index.cpu()]
        self.batch = index.shape[0]

    @property
    def joinable(self) -> bool:
        """Can another session's rows join this one (``merge``)? Not over fixed-shape or sliding caches."""
        return all(getattr(unit.stream, "joinable", False) for unit in self.units)

    def merge(self, other: Session) -> None:
        """``other``'s rows (a started session of the same composer) join this one's, after them: a server's new
        requests join the running batch between steps. Each row keeps its own steps, so schedules stay its own."""
        mine, theirs = self.batch, other.batch
        for unit, joining in zip(self.units, other.units, strict=True):
            unit.stream.merge(joining.stream)
            copies = len(unit.groups) * unit.blocks  # member-major blocks, each of a batch's rows
            order = [[k * mine + b for b in range(mine)] + [copies * mine + k * theirs + b for b in range(theirs)]
                     for k in range(copies)]  # fmt: skip
            unit.stream.select(torch.tensor([i for block in order for i in block]))
        self.rows = [  # format-major: each format's rows of this batch, then the other's
            [
                row
                for f in range(len(a) // mine)
                for row in (*a[f * mine : (f + 1) * mine], *b[f * theirs : (f + 1) * theirs])
            ]
            for a, b in zip(self.rows, other.rows, strict=True)
        ]
        self.row_weights = torch.cat([self.row_weights, other.row_weights.to(self.row_weights.device)], 1)
        self.steps = torch.cat([self.steps, other.steps])
        self.generated = max(self.generated, other.generated)
        self.batch = mine + theirs

    def weights_at(self, first_step: int | torch.Tensor, n: int) -> torch.Tensor:
        """Effective weights ``(K, B, n)``: each row's weight times each objective's schedule.

        ``first_step`` is the step of position 0, for every row (int) or per row ((B,), rows that advanced
        unevenly).
        """
        if isinstance(first_step, torch.Tensor) and first_step.numel() == 1:
            first_step = int(first_step)
        if isinstance(first_step, int):  # every row at the same step: a slice of the table, no gather
            table = self._schedule(first_step + n)[:, first_step : first_step + n]
            return self.row_weights.unsqueeze(-1) * table.unsqueeze(1)
        steps = first_step.reshape(-1, 1) + torch.arange(n)  # (B, n)
        table = self._schedule(int(steps.max()) + 1)
        return self.row_weights.unsqueeze(-1) * table[:, steps.to(table.device)]

    def _schedule(self, steps: int) -> torch.Tensor:
        """Every objective's schedule for steps ``[0, steps)``, ``(K, steps)``: computed once, not per step."""
        if self._schedule_table.shape[1] < steps:
            steps = max(steps, 2 * self._schedule_table.shape[1], 64)
            table = [[o.schedule(t) for t in range(steps)] for o in self.plan.objectives]
            self._schedule_table = torch.tensor(table, dtype=self.row_weights.dtype).reshape(-1, steps)
            self._schedule_table = self._schedule_table.to(self.row_weights.device)
        return self._schedule_table

    def compose(
        self,
        outputs: Mapping[int, torch.Tensor],
        first_step: int | torch.Tensor,
        base: Slot | None = None,
        steer: bool = True,
    ) -> Composed:
        """Composed logits ``(B, n, V)`` from each group's raw logits ``(R_g, n, V)`` (only the groups used).

        ``base`` and ``steer`` let the speculative loop build its draft from the same streams: another
        member as base, with the objectives (the small models' own composition) or without.
        """
        base = self._view(outputs, base or self.plan.base)
        if not steer or not self.plan.objectives:
            empty = base.new_empty((0, *base.shape))
            return Composed(base, base, empty, empty, base.new_empty((0, *base.shape[:2])))
        experts = torch.stack([self._view(outputs, s) for s in self.plan.experts])
        antis = torch.stack([self._view(outputs, s) for s in self.plan.antis])
        if experts.dtype != base.dtype:  # a float64 member (an endpoint's log-probs): compose in float64
            dtype = torch.promote_types(base.dtype, experts.dtype)
            base, experts, antis = base.to(dtype), experts.to(dtype), antis.to(dtype)
        weights = to_device(self.weights_at(first_step, base.shape[1]), self.device, base.dtype)
        return Composed(_combine_unmasked_fast(base, experts, antis, weights), base, experts, antis, weights)

    def _view(self, outputs: Mapping[int, torch.Tensor], slot: Slot) -> torch.Tensor:
        """The slot's rows of its group's logits, over the common vocabulary, on the base's device, in float32
        (float64 stays). Slicing only where needed: a decoding step composes at every token."""
        logits = outputs[slot.group]
        if logits.shape[0] != self.batch:  # the group runs several formats
            logits = logits[slot.format * self.batch : (slot.format + 1) * self.batch]
        if logits.shape[-1] != self.vocab_width:
            logits = logits[..., : self.vocab_width]
        return to_device(logits, self.device, torch.float64 if logits.dtype == torch.float64 else torch.float32)


def _combine_unmasked_fast(
    base: torch.Tensor, experts: torch.Tensor, antis: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``combine`` without its -inf bookkeeping when nothing is masked, where it gives the same values bitwise.

    The bookkeeping costs several passes over (K, B, n, V); one sum tells whether it is needed: any -inf,
    NaN or overflow makes the sum non-finite and takes the careful path. On an accelerator the passes are
    cheap and reading the sum back would stall the host until the step's forwards finish: ``combine`` it is.
    """
    if base.device.type != "cpu":
        return combine(base, experts, antis, weights)
    steered = base + einsum(weights, experts - antis, "k ..., k ... v -> ... v")
    if bool(steered.sum().isfinite()):
        return steered
    return combine(base, experts, antis, weights)
