"""Exact speculative composition: a cheap draft proposes ``gamma`` tokens, the composition verifies them at once.

The draft is built from the composition's own streams: by default the anti-expert stands in for the base,
steered by the same objectives (the small models' own composition), so that the draft's expert and anti-expert
logits are exactly the ones the target needs, computed once. Only the remaining streams (the large base) run
over the drafted tokens in one parallel forward; the draft's streams run once more, past the last draft, only
when some row accepted every draft and takes the bonus token. Acceptance follows Leviathan et al. / Chen et al.
(2023), with the same logits processors applied to target and draft, so the output is distributed exactly as
non-speculative composed decoding; greedy decoding gives exactly its tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import LogitsProcessorList

from composer.decoding import DecodingConfig, choose, drop_finished
from composer.objectives import Member
from composer.plan import Plan, Slot
from composer.session import Composed, Session
from experts.errors import UserInputError, check_whole
from experts.loading import ModelSpec

GAMMA_SCHEDULES = ("constant", "heuristic")


@dataclass
class SpeculationStats:
    """Counts over every round and row since the draft was made (both rates are per row), and the state of
    the draft's gamma schedule (``planned``, ``all_accepted``)."""

    rounds: int = 0  # rows that took part, summed over rounds
    tested: int = 0  # drafted tokens that met the acceptance test (those after a row's rejection never do)
    accepted: int = 0
    committed: int = 0  # tokens kept, summed over rows and rounds
    batches: int = 0  # rounds, each counted once whatever its rows
    drafted: int = 0  # tokens drafted per row, summed over rounds
    planned: int = 0  # the latest round's gamma as the schedule set it (before the cap at the tokens left)
    all_accepted: bool = False  # did every row of the latest round accept all its drafts

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.tested if self.tested else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.committed / self.rounds if self.rounds else 0.0

    @property
    def mean_gamma(self) -> float:
        return self.drafted / self.batches if self.batches else 0.0


@dataclass(frozen=True)
class Draft:
    """How to propose tokens. ``model`` must be one of the composition's members; None means the anti-expert
    that all objectives share. ``steer`` adds the objectives' weighted differences to the draft too.

    ``gamma_schedule`` follows transformers' ``num_assistant_tokens_schedule``: "constant" drafts ``gamma``
    tokens every round; "heuristic" starts at ``gamma`` and drafts two more after a round in which every row
    accepted all its drafts, one fewer (at least one) after any rejection, carried over from one generate
    call to the next. It depends on acceptances only, so a seeded run repeats exactly.
    """

    model: Member | ModelSpec | str | None = None
    steer: bool = True
    gamma: int = 4
    gamma_schedule: Literal["constant", "heuristic"] = "constant"
    stats: SpeculationStats = field(default_factory=SpeculationStats, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        if self.model is not None and not isinstance(self.model, str | ModelSpec | Member):
            raise UserInputError(f"draft model {self.model!r}: give a model path, a ModelSpec or a Member")
        check_whole("draft gamma", self.gamma, minimum=1)
        if self.gamma_schedule not in GAMMA_SCHEDULES:
            raise UserInputError(f"gamma_schedule={self.gamma_schedule!r}: use one of {GAMMA_SCHEDULES}")

    def next_gamma(self) -> int:
        """Tokens to draft in the next round, before the cap at the tokens left."""
        stats = self.stats
        if self.gamma_schedule == "constant" or stats.planned == 0:
            return self.gamma
        return stats.planned + 2 if stats.all_accepted else max(1, stats.planned - 1)

    def slot(self, plan: Plan) -> Slot:
        """The draft's base among the plan's streams, so that it costs no extra model."""
        if self.model is None:
            antis = set(plan.antis)
            if len(antis) != 1:
                raise UserInputError(
                    "the objectives do not share one anti-expert to draft for them all; name the draft model "
                    "(Draft(model=...); speculative.draft=OBJECTIVE on the command line)"
                )
            return antis.pop()
        for slot in [plan.base, *plan.experts, *plan.antis]:
            spec = plan.specs[slot.group]
            # a path names a model whatever its dtype and prompt formats, a spec whatever its formats
            if isinstance(self.model, str) and _same_path(spec.path, self.model):
                return slot
            if self.model in (spec, Member(spec, plan.formats[slot.group][slot.format])):
                return slot
        spec = self.model.model if isinstance(self.model, Member) else self.model
        path = spec if isinstance(spec, str) else spec.path
        raise UserInputError(
            f"draft model {path!r} is not an expert or anti-expert of this composition; use one of them"
        )


def speculate(
    session: Session,
    first: Composed,
    history: torch.Tensor,
    config: DecodingConfig,
    draft: Draft,
    finished: Collection[int] = (),
) -> Iterator[tuple[torch.Tensor, torch.Tensor, Composed]]:
    """Yields (rows, chosen tokens (B',), composed parts at that step), as the plain decode loop does.

    ``first`` is the started session's output and ``history`` the base's prompt ids (B, L). Each row keeps
    what it accepted, so rows advance unevenly (``Session.retract``); a position's yield covers the rows that
    reached it. Rows that the caller marks ``finished``, and rows at ``max_new_tokens``, leave the batch.
    """
    speculator = _Speculator(session, config, draft)
    chosen = choose(speculator.processors(history, first.logits[:, -1]), config.do_sample, speculator.generator)
    rows = torch.arange(history.shape[0])
    yield rows, chosen, first
    history = torch.cat([history, chosen.unsqueeze(1)], dim=1)
    while True:
        # session.steps counts each row's fed tokens; its last generated token is not fed to any stream yet
        ended = {*finished, *rows[session.steps + 1 >= config.max_new_tokens].tolist()}
        if all(row in ended for row in rows.tolist()):
            return
        rows, (history,) = drop_finished(session, rows, ended, history)
        generated = session.steps + 1
        planned = draft.next_gamma()
        gamma = min(planned, config.max_new_tokens - int(generated.min()) - 1)
        tokens, kept, composed = speculator.round(history, generated, gamma)
        if gamma:  # a round without drafts (one token left) says nothing of the draft
            draft.stats.planned, draft.stats.all_accepted = planned, bool((kept == gamma + 1).all())
        for j in range(int(kept.max())):
            reached = ((kept > j) & (generated + j < config.max_new_tokens)).nonzero()[:, 0]
            if len(reached):
                yield rows[reached], tokens[reached, j], composed.take(reached, slice(j, j + 1))
        history = append_ragged(history, tokens, kept)


def append_ragged(history: torch.Tensor, tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``history`` (B, L) with row b's first ``kept[b]`` of ``tokens`` (B, n) appended, right-aligned.

    Shorter rows are filled on the left with copies of their own first id: the only processor that reads
    the ids (the repetition penalty) treats them as a set, so the fill changes nothing.
    """
    width = history.shape[1] + int(kept.max())
    joined = torch.cat([history, tokens], dim=1)
    columns = torch.arange(width, device=history.device) + (kept.to(history.device) - int(kept.max())).unsqueeze(1)
    return joined.gather(1, columns.clamp(min=0))


class _Speculator:
    def __init__(self, session: Session, config: DecodingConfig, draft: Draft) -> None:
        self.session = session
        self.config = config
        self.draft = draft
        self.base = draft.slot(session.plan)
        plan = session.plan
        steered = plan.experts + plan.antis if draft.steer else []
        # the units holding the draft's groups advance token by token; the others verify in one forward
        self.draft_units = sorted({session.unit_of(s.group) for s in [self.base, *steered]})
        self.verify_units = [u for u in range(len(session.units)) if u not in self.draft_units]
        self.processors: LogitsProcessorList = config.processors()
        self.generator = config.generator(session.device)

    def round(
        self, history: torch.Tensor, generated: torch.Tensor, gamma: int
    ) -> tuple[torch.Tensor, torch.Tensor, Composed]:
        """One draft-verify round; row b has ``generated[b]`` tokens, the last of them not yet fed to any stream.

        ``history`` (B, L) ends with each row's tokens. Returns the tokens (B, gamma + 1) of which row b keeps
        the first ``kept[b]`` (1 to gamma + 1), ``kept`` (B,), and the target's composition at their positions.
        """
        session = self.session
        pending = history[:, -1:]
        drafts, draft_scores, draft_outputs = self._propose(pending, history, generated, gamma)
        fed = torch.cat([pending, drafts], dim=1)  # (B, gamma + 1): each row's last token, then the drafts
        verified = session.advance_units(dict.fromkeys(self.verify_units, fed))
        session.advanced(gamma)
        head = None
        if gamma:
            outputs = {group: logits[:, :gamma] for group, logits in verified.items()}
            outputs |= {group: torch.cat(parts, 1) for group, parts in draft_outputs.items()}
            head = session.compose(outputs, first_step=generated)

        def bonus() -> Composed:
            """The target after the last draft: the draft's streams run it only when some row accepted all."""
            outputs = {group: logits[:, gamma:] for group, logits in verified.items()}
            outputs |= session.advance_units(dict.fromkeys(self.draft_units, fed[:, gamma:]))
            session.advanced(1)
            return session.compose(outputs, first_step=generated + gamma)

        tokens, kept, composed = self._accept(head, bonus, drafts, draft_scores, history)
        appended = composed.logits.shape[1]  # gamma, or gamma + 1 with the bonus position
        if appended == gamma:
            session.crop_units(self.verify_units)  # their forward's last column went unused
        session.retract(kept, appended)
        return tokens, kept, composed

    def _propose(
        self, pending: torch.Tensor, history: torch.Tensor, generated: torch.Tensor, gamma: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict[int, list[torch.Tensor]]]:
        """``gamma`` draft tokens (B, gamma), the draft's processed scores for each, and its groups' raw logits."""
        outputs: dict[int, list[torch.Tensor]] = {}
        feed, drafts, scores = pending, [], []
        for i in range(gamma):
            step: dict[int, torch.Tensor] = {}
            for unit in self.draft_units:
                step.update(self.session.advance(unit, feed))
            for group, logits in step.items():
                outputs.setdefault(group, []).append(logits)
            logits = self.session.compose(step, generated + i, base=self.base, steer=self.draft.steer).logits
            scores.append(self.processors(_extended(history, drafts), logits[:, -1]))
            feed = choose(scores[-1], self.config.do_sample, self.generator).unsqueeze(1)
            drafts.append(feed)
        empty = pending.new_empty((pending.shape[0], 0))
        return torch.cat(drafts, dim=1) if drafts else empty, scores, outputs

    def _accept(
        self,
        head: Composed | None,
        bonus: Callable[[], Composed],
        drafts: torch.Tensor,
        draft_scores: list[torch.Tensor],
        history: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, Composed]:
        """Each row's drafts up to its first rejection, then its correction (or a bonus token after all of them).

        ``head`` is the target at the drafts' positions (None for no drafts), ``bonus`` computes it after the
        last draft. Returns the tokens (B, gamma + 1), where row b's first ``kept[b]`` count, ``kept`` (B,),
        and the target at the positions computed.
        """
        stats, gamma, rows = self.draft.stats, drafts.shape[1], drafts.shape[0]
        tokens = torch.cat([drafts, drafts.new_zeros((rows, 1))], dim=1)
        kept = torch.full((rows,), gamma + 1, dtype=torch.long, device=drafts.device)
        testing = torch.ones(rows, dtype=torch.bool, device=drafts.device)  # rows with no rejection yet
        composed = head
        for i in range(gamma + 1):
            if i == gamma:  # every draft accepted: a bonus token from the target
                tail = bonus()
                composed = tail if composed is None else composed.joined(tail)
                target = self.processors(_extended(history, [drafts]), tail.logits[:, 0])
                tokens[:, i] = torch.where(testing, choose(target, self.config.do_sample, self.generator), tokens[:, i])
                break
            target = self.processors(_extended(history, [drafts[:, :i]]), composed.logits[:, i])
            accepted, token = self._test(target, draft_scores[i], drafts[:, i])
            stats.tested += int(testing.sum())
            stats.accepted += int((accepted & testing).sum())
            rejected = testing & ~accepted
            tokens[:, i] = torch.where(rejected, token, tokens[:, i])
            kept = torch.where(rejected, i + 1, kept)
            testing &= accepted
            if not bool(testing.any()):
                break
        stats.rounds += rows
        stats.batches += 1
        stats.drafted += gamma
        stats.committed += int(kept.sum())
        return tokens, kept.cpu(), composed

    def _test(
        self, target: torch.Tensor, proposal: torch.Tensor, drafted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: was the drafted token accepted, and the token to keep at this position (drafted or corrected)."""
        if not self.config.do_sample:
            best = target.argmax(-1)
            return best == drafted, best
        p, q = torch.softmax(target, -1), torch.softmax(proposal, -1)
        p_x, q_x = p.gather(-1, drafted[:, None])[:, 0], q.gather(-1, drafted[:, None])[:, 0]
        uniform = torch.rand(p_x.shape, generator=self.generator, device=p.device, dtype=p.dtype)
        accepted = uniform * q_x < p_x  # probability min(1, p(x) / q(x))
        if bool(accepted.all()):
            return accepted, drafted  # no correction needed: skip the residual's sampling
        residual = (p - q).clamp(min=0)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p)  # p == q: nothing to correct
        corrected = torch.multinomial(residual, 1, generator=self.generator)[:, 0]
        return accepted, torch.where(accepted, drafted, corrected)


def _extended(history: torch.Tensor, drafted: list[torch.Tensor]) -> torch.Tensor:
    """The ids the processors see (repetition penalty): history followed by the drafted tokens so far."""
    return torch.cat([history, *drafted], dim=1) if drafted else history


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.expanduser(a)) == os.path.normpath(os.path.expanduser(b))
