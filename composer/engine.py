"""The Composer: a base model plus weighted objectives, with generate, stream and score."""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from composer.decoding import DecodingConfig, as_decoding, choose, drop_finished
from composer.guards import check_overrides
from composer.objectives import Member, Objective, as_member
from composer.plan import Plan
from composer.scoring import ContinuationScore, score_continuations
from composer.session import Composed, Session, render_rows
from composer.speculative import Draft, speculate
from composer.trace import TokenLogprobs, TokenTrace, token_logprobs, trace_row
from composer.units import partition
from composer.vocab import common_vocab_width
from composer.weights import WeightOverride, row_weights
from experts.api import ApiModel
from experts.errors import UserInputError, check_whole
from experts.loading import LoadedModel, ModelSpec, load
from experts.stream import check_fits


@dataclass
class Completion:
    prompt: str
    text: str
    token_ids: list[int]
    weights: dict[str, float]
    finish_reason: str  # "eos", "stop", "length", or "cancelled" (a server's client went away)
    trace: list[TokenTrace] | None = None
    guards_overridden: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None  # with generate(logprobs=N)



class Composer:
    """s_base + sum_k w_k(t) * (s_expert_k - s_anti_k), over unique streams loaded and run once each."""

    def __init__(
        self,
        base: Member | ModelSpec | str,
        objectives: Sequence[Objective] = (),
        override_guards: Sequence[str] = (),
        stack_models: bool = True,
        cuda_streams: bool = True,
        cuda_graphs: bool = False,
        compile: bool = False,
    ) -> None:
        """``override_guards`` names objectives whose weight guards (bounds, protected) may be broken; the
        override is recorded in every completion. ``stack_models`` runs the experts and anti-experts that share
        an architecture as one forward per step (their weights stacked); off, each runs alone.
        ``cuda_streams`` runs the base and the stack on CUDA streams of their own, side by side.
        ``cuda_graphs`` replays each decoding step of plain (not speculative) generation as CUDA graphs over
        caches allotted up front: on a GPU the eager step is bound by Python and kernel launches.
        ``compile`` runs every step after the prefill, plain and speculative, through torch.compile over the
        growing caches (``experts.compiled``): the first steps wait for the compilation, later ones skip most of
        Python's dispatch cost."""
        if cuda_graphs and compile:
            raise UserInputError("cuda_graphs and compile both replace the eager decoding step; choose one")
        if isinstance(override_guards, str):
            override_guards = [override_guards]
        objectives = [objectives] if isinstance(objectives, Objective) else objectives
        if isinstance(objectives, Mapping | str) or not all(isinstance(o, Objective) for o in objectives):
            raise UserInputError("objectives: give a list of Objective(name, expert, anti, weight=...)")
        self.plan = Plan(as_member(base, "the base"), objectives)
        check_overrides(override_guards, objectives)
        self.override_guards = tuple(override_guards)
        self.stack_models = stack_models
        self.cuda_streams = cuda_streams
        self.cuda_graphs = cuda_graphs
        self.compile = compile
        self._stacks: dict[int, torch.nn.Module] = {}  # see _hold
        self.guard_notes = row_weights(self.plan.objectives, 1, None, self.override_guards)[1][0]
        self.models = [load(spec) for spec in self.plan.specs]
        self.tokenizer = self.models[self.plan.base.group].tokenizer
        self.vocab_width = common_vocab_width([self.models[self.plan.base.group], *self.models])
        self.eos_ids = _eos_ids(self.models[self.plan.base.group])

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self.plan.objectives

    def explain(self) -> str:
        units = partition(self.models, {self.plan.base.group}, self.stack_models)
        self._hold(units)
        return self.plan.explain([groups for groups, _ in units])

    def session(self, prompts: Sequence[str], weights: WeightOverride = None, max_new_tokens: int = 0) -> Session:
        """Decoding state for a batch: the primitive that every decoding loop drives."""
        return self._session(prompts, weights, max_new_tokens)[0]

    def check(
        self,
        prompts: Sequence[str] | str,
        weights: WeightOverride = None,
        max_new_tokens: int = 0,
        prompt_ids: Sequence[list[int]] | None = None,
    ) -> None:
        """Raise what ``generate`` would raise for these prompts (bad weights, guards, prompts empty or too long
        for a member's context window) without running a model, so that a long run learns of a bad prompt
        before its first batch rather than at it."""
        prompts = _prompt_list(prompts)
        row_weights(self.objectives, len(prompts), weights, self.override_guards)
        for model, group in zip(self.models, render_rows(self.plan, self.models, prompts, prompt_ids), strict=True):
            check_fits(model, [len(row) for row in group], max_new_tokens)

    def _session(
        self,
        prompts: Sequence[str],
        weights: WeightOverride,
        max_new_tokens: int,
        draft: Draft | None = None,
        prompt_ids: Sequence[list[int]] | None = None,
    ) -> tuple[Session, list[list[str]]]:
        prompts = _prompt_list(prompts)
        table, guard_notes = row_weights(self.objectives, len(prompts), weights, self.override_guards)
        rows = render_rows(self.plan, self.models, prompts, prompt_ids)
        # a model that drafts by itself runs outside its stack, or every drafted token would run the whole stack
        speculative = draft is not None
        alone = {draft.slot(self.plan).group} if speculative and not draft.steer else set()
        graphs = self.cuda_graphs and not speculative
        session = self.session_over(rows, table, max_new_tokens, alone, graphs, speculative)
        return session, guard_notes

    def session_over(
        self,
        rows: list[list[list[int]]],
        table: torch.Tensor,
        max_new_tokens: int = 0,
        alone: Collection[int] = (),
        cuda_graphs: bool = False,
        speculative: bool = False,
    ) -> Session:
        """A session over rows already rendered (``render_rows``) and weights per row (K, B), with this
        composer's settings; it keeps the session's stacks so that later sessions reuse them."""
        session = Session(
            self.plan,
            self.models,
            self.vocab_width,
            rows,
            table,
            max_new_tokens,
            self.stack_models,
            alone,
            self.cuda_streams,
            cuda_graphs,
            self.compile,
            speculative,
        )
        self._hold([(unit.groups, unit.stream.model) for unit in session.units])
        return session

    def _hold(self, units: Sequence[tuple[list[int], torch.nn.Module]]) -> None:
        """Keep the stacks among ``units`` (groups, module) alive, so that later sessions reuse them."""
        self._stacks.update({id(model): model for groups, model in units if len(groups) > 1})

    def generate(
        self,
        prompts: Sequence[str] | str,
        config: DecodingConfig | Mapping[str, Any] | None = None,
        weights: WeightOverride = None,
        trace: bool = False,
        draft: Draft | None = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """One completion per prompt (``num_return_sequences`` per prompt when sampling), in prompt order.

        With a ``draft``, decoding is speculative: faster when the base dominates the cost, same distribution.
        ``logprobs=N`` records, per generated token, its log-probability under the composed distribution and
        the N most likely tokens' (N=0: the chosen token's alone).
        """
        config = as_decoding(config)
        prompts = _prompt_list(prompts)
        if logprobs is not None:
            check_whole("logprobs", logprobs, minimum=0, maximum=self.vocab_width)
        session, guard_notes = self._session(prompts, weights, config.max_new_tokens, draft)
        repeats = torch.arange(len(prompts)).repeat_interleave(config.num_return_sequences)
        prompt_of_row = [prompts[i] for i in repeats.tolist()]
        weights_of_row = session.row_weights.index_select(1, repeats.to(session.row_weights.device))
        tokens: list[list[int]] = [[] for _ in prompt_of_row]
        traces: list[list[TokenTrace]] = [[] for _ in prompt_of_row]
        chosen_logprobs: list[list[TokenLogprobs]] = [[] for _ in prompt_of_row]
        reasons = ["length"] * len(prompt_of_row)
        finished: set[int] = set()
        for rows, chosen, composed in self._decode(session, config, repeats, draft, finished):
            steps = token_logprobs(composed.logits[:, -1], chosen, logprobs) if logprobs is not None else None
            for i, (row, token) in enumerate(zip(rows.tolist(), chosen.tolist(), strict=True)):
                if row in finished:
                    continue  # a speculative round can run past a row's end; those tokens are thrown away
                tokens[row].append(token)
                if trace:
                    traces[row].append(self._trace(composed, i, tokens[row]))
                if steps is not None:
                    chosen_logprobs[row].append(steps[i])
                reasons[row] = self._finish_reason(token, tokens[row], config)
                if reasons[row] != "length":
                    finished.add(row)
            if len(finished) == len(reasons):
                break
        names = [o.name for o in self.objectives]
        return [
            Completion(
                prompt=prompt_of_row[row],
                text=self._text(tokens[row], reasons[row], config),
                token_ids=tokens[row],
                weights=dict(zip(names, weights_of_row[:, row].tolist(), strict=True)),
                finish_reason=reasons[row],
                trace=traces[row] if trace else None,
                guards_overridden=list(guard_notes[int(repeats[row])]),
                logprobs=chosen_logprobs[row] if logprobs is not None else None,
            )
            for row in range(len(prompt_of_row))
        ]

    def stream(
        self,
        prompt: str,
        config: DecodingConfig | Mapping[str, Any] | None = None,
        weights: WeightOverride = None,
        draft: Draft | None = None,
    ) -> Iterator[str]:
        """Text as it is produced, for one prompt; with a ``draft``, decoded speculatively (the same text)."""
        if not isinstance(prompt, str):
            raise UserInputError(f"stream takes one prompt, a string, not {type(prompt).__name__}; loop for more")
        config = as_decoding(config)
        if config.num_return_sequences != 1:
            config = replace(config, num_return_sequences=1)
        session = self._session([prompt], weights, config.max_new_tokens, draft)[0]
        tokens: list[int] = []
        shown = ""
        for _, chosen, _ in self._decode(session, config, torch.zeros(1, dtype=torch.long), draft):
            tokens.append(int(chosen[0]))
            reason = self._finish_reason(tokens[-1], tokens, config)
            ready = self.ready_text(tokens, reason, config)
            if len(ready) > len(shown):
                yield ready[len(shown) :]
                shown = ready
            if reason != "length":
                return

    def ready_text(self, tokens: list[int], reason: str, config: DecodingConfig) -> str:
        """What a stream may show of a generation so far: all of it once it ended (``reason`` is not "length",
        or ``max_new_tokens`` is reached); before, not an ending that a later token could still change."""
        if reason != "length" or len(tokens) == config.max_new_tokens:
            return self._text(tokens, reason, config)
        # byte-fallback tokens decode run by run: an open run may still turn into replacement characters
        closed = tokens[: len(tokens) - _open_byte_run(self.tokenizer, tokens)]
        return _settled(self._text(closed, reason, config), config.stop, _cleans_up(self.tokenizer))

    def score(
        self, prompts: Sequence[str] | str, continuations: Sequence[str] | str, weights: WeightOverride = None
    ) -> list[ContinuationScore]:
        """log p_composed(continuation | prompt), one uncached forward per unique weights, no decode loop; a
        prompt and a continuation given as two strings are one pair."""
        if isinstance(prompts, str) and isinstance(continuations, str):
            prompts, continuations = [prompts], [continuations]
        if isinstance(prompts, str) or isinstance(continuations, str):
            raise UserInputError("score takes two lists of texts (prompts, continuations), or one of each as strings")
        return score_continuations(self, list(prompts), list(continuations), weights)

    def _decode(
        self,
        session: Session,
        config: DecodingConfig,
        repeats: torch.Tensor,
        draft: Draft | None = None,
        finished: Collection[int] = (),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, Composed]]:
        """Yields (rows (B',), chosen tokens (B',), composed parts) until max_new_tokens or the caller stops.

        ``rows`` are the indices (into ``repeats``) of the rows still decoding: the caller adds a row to
        ``finished`` when it ends, and the next step runs without it (``Session.select``).
        """
        composed = session.start()
        history = base_prompt_ids(session).index_select(0, repeats.to(session.device))  # before select: B rows
        if config.num_return_sequences > 1:
            session.select(repeats.to(session.device))
            composed = composed.take(rows=repeats.to(session.device))
        if draft is not None:
            yield from speculate(session, composed, history, config, draft, finished)
            return
        processors = config.processors()
        generator = config.generator(session.device)
        rows = torch.arange(len(repeats))
        for step in range(config.max_new_tokens):
            scores = processors(history, composed.logits[:, -1])
            chosen = choose(scores, config.do_sample, generator)
            yield rows, chosen, composed
            if step + 1 == config.max_new_tokens:
                return
            history = torch.cat([history, chosen.unsqueeze(1)], dim=1)
            rows, (history, chosen) = drop_finished(session, rows, finished, history, chosen)
            composed = session.extend(chosen.unsqueeze(1))

    def _finish_reason(self, token: int, tokens: list[int], config: DecodingConfig) -> str:
        if token in self.eos_ids:
            return "eos"
        if config.stop and _has_stop(self.tokenizer, tokens, config.stop):
            return "stop"
        return "length"

    def _text(self, tokens: list[int], reason: str, config: DecodingConfig) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if reason != "stop":
            return text
        found = [text.find(s) for s in config.stop if s in text]
        if found:
            return text[: min(found)]
        # the stop holds a special token (found with specials kept, as _finish_reason looks): show the tokens
        # that end before it starts
        kept = self.tokenizer.decode(tokens)
        start = min(kept.find(s) for s in config.stop if s in kept)
        before = max(k for k in range(len(tokens)) if len(self.tokenizer.decode(tokens[:k])) <= start)
        return self.tokenizer.decode(tokens[:before], skip_special_tokens=True)

    def _trace(self, composed: Composed, row: int, tokens: list[int]) -> TokenTrace:
        """The last of ``tokens`` explained; its text is what it adds to the decoded text, as streaming shows it
        (decoded alone, a SentencePiece token loses its leading space)."""
        token = tokens[-1]
        return trace_row(
            composed.logits[row, -1],
            composed.base[row, -1],
            composed.experts[:, row, -1],
            composed.antis[:, row, -1],
            composed.weights[:, row, -1],
            [o.name for o in self.objectives],
            token,
            self.tokenizer.convert_ids_to_tokens(token),
            self.tokenizer.decode(tokens)[len(self.tokenizer.decode(tokens[:-1])) :],
        )


def _prompt_list(prompts: Sequence[str] | str) -> list[str]:
    """One prompt or several, as a list; none is a mistake."""
    if not isinstance(prompts, str) and not isinstance(prompts, Sequence):
        raise UserInputError(f"prompts={prompts!r}: give a string or a list of strings")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise UserInputError("no prompts were given; pass at least one")
    if not all(isinstance(p, str) for p in prompts):
        raise UserInputError("prompts must be strings; token ids go through ComposedForCausalLM or session_over")
    return prompts


def base_prompt_ids(session: Session) -> torch.Tensor:
    """The base's prompt ids, the history that the repetition penalty looks at: a shorter row is filled on the
    left with its own first id, not the pad token, which the penalty (reading ids as a set) would lower in a
    batch and not alone."""
    base = session.plan.base
    rows = session.rows[base.group][base.format * session.batch : (base.format + 1) * session.batch]
    width = max(len(row) for row in rows)
    return torch.tensor([[row[0]] * (width - len(row)) + row for row in rows], device=session.device)


def _eos_ids(model: LoadedModel | ApiModel) -> set[int]:
    eos = None if model.model is None else model.model.generation_config.eos_token_id
    if eos is None:
        eos = model.tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return {i for i in ids if i is not None}


def _settled(text: str, stops: tuple[str, ...], cleans_up: bool) -> str:
    """What a stream may show of ``text`` while decoding goes on: not a trailing incomplete character, nor the
    longest ending that a later token could complete into a stop string (which ``generate`` would cut off), nor,
    where decoding cleans up spaces, an ending that a later token could complete into a clean-up (" n't")."""
    text = text.rstrip("\ufffd")
    pending = (*stops, *_CLEAN_UPS) if cleans_up else stops
    held = max((n for stop in pending for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
    return text[: len(text) - held]


_CLEAN_UPS = (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're")  # transformers' clean-up


def _open_byte_run(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> int:
    """How many of the last tokens are SentencePiece byte-fallback pieces (<0x..>, Llama-2's), with any special
    tokens among them (the text skips those, joining the runs around them): a run of byte pieces decodes as a
    whole, its characters only if every byte of the run is valid UTF-8, so it settles when another piece
    follows."""
    special = set(tokenizer.all_special_ids)
    run = 0
    while run < len(tokens) and (
        tokens[-1 - run] in special or _BYTE_PIECE.fullmatch(tokenizer.convert_ids_to_tokens(tokens[-1 - run]) or "")
    ):
        run += 1
    return run


@functools.lru_cache(maxsize=16)
def _cleans_up(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Does decoding drop spaces before punctuation (WordPiece's clean-up)? The flag alone does not say:
    transformers 5 ignores it for BPE tokenizers, and Llama 3's sets it."""
    if not tokenizer.clean_up_tokenization_spaces:
        return False
    ids = tokenizer.encode("a . b", add_special_tokens=False)
    if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != "a . b":
        return True  # the probe does not survive this vocabulary: take the flag at its word
    return tokenizer.decode(ids) != "a . b"


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _has_stop(tokenizer: PreTrainedTokenizerBase, tokens: list[int], stops: tuple[str, ...]) -> bool:
    """Does the decoded text hold a stop string? The last tokens' text answers no, in time linear in the
    generation: a stop that the newest token completed lies within the longest stop's bytes + 2 tokens, where
    each token adds a byte of its own (two more: a SentencePiece decode drops the window's leading space). Where
    that may not hold, the whole text decides: a replacement character in the tail (byte-fallback tokens decode
    run by run, so a run cut by the window reads differently), a decode that cleans up spaces (a space token
    then adds nothing), and a find, which the whole text confirms."""
    tail = tokenizer.decode(tokens[-(max(len(s.encode()) for s in stops) + 2) :])
    if "\ufffd" not in tail and not _cleans_up(tokenizer) and not any(s in tail for s in stops):
        return False
    text = tokenizer.decode(tokens)
    return any(s in text for s in stops)
