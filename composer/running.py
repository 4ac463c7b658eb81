"""Continuous batching: rows that decode a step at a time, which new prompts join between steps.

A server's requests arrive while others decode. Each joins the running batch at the next step (its prompts
prefilled, its streams' caches padded to the batch's width, ``Session.merge``) and leaves it when it ends, so
the batch stays full without waiting for its longest row. Every row keeps its own settings, generator, steps
(schedules) and repetition-penalty history, so its tokens are those it would get alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList

from composer.decoding import DecodingConfig, choose
from composer.engine import Completion, Composer, base_prompt_ids
from composer.session import Composed, Session
from composer.trace import TokenLogprobs, token_logprobs


@dataclass(eq=False)
class Row:
    """One sequence being decoded; ``tag`` is the caller's (the request it answers)."""

    tag: object
    prompt: str
    config: DecodingConfig
    weights: dict[str, float]
    guards_overridden: list[str]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    reason: str = "length"

    @property
    def ended(self) -> bool:
        return self.reason != "length" or len(self.tokens) == self.config.max_new_tokens

    def completion(self, composer: Composer) -> Completion:
        return Completion(
            prompt=self.prompt,
            text=composer.ready_text(self.tokens, self.reason, self.config),
            token_ids=list(self.tokens),
            weights=dict(self.weights),
            finish_reason=self.reason,
            guards_overridden=list(self.guards_overridden),
            logprobs=list(self.logprobs),
        )


# (row, its last token's log-probs if asked) -> keep decoding it?
RowListener = Callable[[Row, TokenLogprobs | None], bool]


class RunningBatch:
    def __init__(self, composer: Composer) -> None:
        self.composer = composer
        self.session: Session | None = None
        self.composed: Composed | None = None  # predicts every live row's next token
        self.history: torch.Tensor | None = None  # each row's ids so far, for the repetition penalty
        self.live: list[Row] = []
        self._sampling: dict[int, tuple[DecodingConfig, LogitsProcessorList, torch.Generator | None]] = {}

    @property
    def joinable(self) -> bool:
        """Can prompts join now? Always while empty; then where every stream's cache can take rows in."""
        return self.session is None or self.session.joinable

    def join(
        self,
        tags: Sequence[object],
        prompts: Sequence[str],
        configs: Sequence[DecodingConfig],
        weights: Sequence[Mapping[str, float]],
        prompt_ids: Sequence[list[int]],
    ) -> list[Row]:
        """Prefill these prompts and add their rows (``num_return_sequences`` each) to the batch."""
        composer = self.composer
        session, notes = composer._session(
            prompts, list(weights), max(c.max_new_tokens for c in configs), None, prompt_ids
        )
        composed = session.start()
        repeats = torch.tensor([i for i, c in enumerate(configs) for _ in range(c.num_return_sequences)])
        history = base_prompt_ids(session).index_select(0, repeats.to(session.device))
        if len(repeats) != session.batch:
            session.select(repeats.to(session.device))
            composed = composed.take(rows=repeats.to(session.device))
        names = [o.name for o in composer.objectives]
        rows = [
            Row(tags[i], prompts[i], configs[i], dict(zip(names, session.row_weights[:, r].tolist(), strict=True)),
                notes[i])
            for r, i in enumerate(repeats.tolist())
        ]  # fmt: skip
        for config in configs:
            if id(config) not in self._sampling:
                self._sampling[id(config)] = (config, config.processors(), config.generator(session.device))
        if self.session is None:
            self.session, self.composed, self.history = session, composed, history
        else:
            self.session.merge(session)
            self.composed = self.composed.beside(composed)
            self.history = _beside(self.history, history)
        self.live += rows
        return rows

    def step(self, listener: RowListener, logprobs: int | None = None) -> list[Row]:
        """Choose every live row's next token and advance the batch; returns the rows that ended."""
        last = self.composed.logits[:, -1]
        chosen = self._choose(last)
        steps = token_logprobs(last, chosen, logprobs) if logprobs is not None else None
        ended = []
        for i, (row, token) in enumerate(zip(self.live, chosen.tolist(), strict=True)):
            row.tokens.append(token)
            if steps is not None:
                row.logprobs.append(steps[i])
            row.reason = self.composer._finish_reason(token, row.tokens, row.config)
            if not listener(row, steps[i] if steps is not None else None):
                row.reason = "cancelled"
            if row.ended:
                ended.append(row)
        keep = [i for i, row in enumerate(self.live) if not row.ended]
        if not keep:
            self.session = self.composed = self.history = None
            self.live, self._sampling = [], {}
            return ended
        history = torch.cat([self.history, chosen.unsqueeze(1)], dim=1)
        if len(keep) < len(self.live):
            index = torch.tensor(keep)
            self.session.select(index)
            history, chosen = history.index_select(0, index.to(history.device)), chosen[index.to(chosen.device)]
            self.live = [self.live[i] for i in keep]
            used = {id(row.config) for row in self.live}
            self._sampling = {key: value for key, value in self._sampling.items() if key in used}
        self.history = history
        self.composed = self.session.extend(chosen.unsqueeze(1))
        return ended

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row by its own config's processors and generator (the rows of one request share them)."""
        chosen = torch.empty(len(self.live), dtype=torch.long, device=logits.device)
        for key, (config, processors, generator) in self._sampling.items():
            index = torch.tensor([i for i, row in enumerate(self.live) if id(row.config) == key], device=logits.device)
            scores = processors(self.history.index_select(0, index), logits.index_select(0, index))
            chosen[index] = choose(scores, config.do_sample, generator)
        return chosen


def _beside(history: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Two batches' id histories as one: the narrower filled on the left with each row's own first id (the
    repetition penalty reads ids as a set, so the fill changes nothing)."""
    width = max(history.shape[1], other.shape[1])

    def fill(ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([ids[:, :1].expand(-1, width - ids.shape[1]), ids], dim=1)

    return torch.cat([fill(history), fill(other.to(history.device))])
