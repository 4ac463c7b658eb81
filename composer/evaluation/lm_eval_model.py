"""The Composer as an lm-evaluation-harness model, registered as ``proxy-composer``.

Unlike ``HFLM`` over ``ComposedForCausalLM``, this adapter knows where the context ends, so every member
sees its own prompt format (chat experts get their template) and schedules count continuation tokens.
Tokenisation is lm-eval's own (``TemplateLM``): the context's trailing whitespace moves into the continuation,
an empty context is the prefix token alone, and long texts are cut into HFLM's rolling windows, so that a
recipe without prompt formats scores exactly as ``HFLM`` does, texts too long for a member's context window
included (cut from the left, as HFLM cuts them).

Import this module before ``lm_eval.simple_evaluate`` (lm-eval 0.4 has no entry-point plug-ins), or run lm-eval's
command line through ``proxy-compose lm-eval ...``. By name, ``model_args`` are a recipe's Hydra overrides
(``recipe=tiny,objectives.math.weight=0.3``) besides ``batch_size`` and ``max_gen_toks``.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, has_bos_prefix, normalize_gen_kwargs, resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from omegaconf import DictConfig, open_dict
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from composer.config import build_composer, compose, model_nodes
from composer.decoding import DecodingConfig
from composer.engine import Composer
from composer.weights import row_weights
from experts.errors import UserInputError
from experts.loading import device_available
from experts.prompts import PromptFormat, Raw

# A request as TemplateLM hands it to _loglikelihood_tokens: (context, continuation) text, or None for a
# rolling window, which has no text; then the context's and the continuation's token ids.
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]
# The generation_kwargs a task may set: lm-eval's stop strings and token budget (normalize_gen_kwargs folds the
# budget's aliases into max_gen_toks), then DecodingConfig's settings by their own names. generate_until returns
# one text per request, so num_return_sequences has no place; ``until`` is lm-eval's name for the stop strings.
TOKEN_BUDGET = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
GEN_KWARGS = {"until", *TOKEN_BUDGET, *({f.name for f in fields(DecodingConfig)} - {"stop", "num_return_sequences"})}
logger = logging.getLogger(__name__)


@register_model("proxy-composer")
class ComposerLM(TemplateLM):
    def __init__(self, composer: Composer, batch_size: int = 8, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.composer = composer
        self.tokenizer = composer.tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ComposerLM:
        """``--model_args recipe=tiny,objectives.math.weight=0.3,batch_size=4`` (lm-eval's comma-separated form)."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> ComposerLM:
        """The composer that ``proxy-compose`` would build with these overrides. ``batch_size`` and
        ``max_gen_toks`` are the adapter's; lm-eval's ``--batch_size`` counts where model_args has none, its
        ``--device`` places the models that the recipe does not."""
        args = dict(arg_dict)
        extra = {key: value for key, value in (additional_config or {}).items() if value is not None}
        batch_size = _whole("batch_size", args.pop("batch_size", extra.get("batch_size", 8)))
        max_gen_toks = _whole("max_gen_toks", args.pop("max_gen_toks", 256))
        cfg = compose([_override(key, value) for key, value in args.items()])
        if "device" in extra:
            _place(cfg, str(extra["device"]))
        return cls(build_composer(cfg), batch_size=batch_size, max_gen_toks=max_gen_toks)

    @property
    def tokenizer_name(self) -> str:
        """lm-eval reads it only to apply a chat template over the whole composition (--apply_chat_template)."""
        raise UserInputError(
            "proxy-composer gives each member its own prompt format (format: chat in the recipe); "
            "drop --apply_chat_template"
        )

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is conditioned on, as in HFLM: the start token, else the end token."""
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    @functools.cached_property
    def max_length(self) -> int:
        """The shortest context window among the members: every member reads each rolling window."""
        local = [resolve_max_length(m.model.config, m.tokenizer) for m in self.composer.models if m.model is not None]
        windows = [m.context_window for m in self.composer.models if m.model is None and m.context_window]
        # an endpoint's window is its context_window setting where it gives one; none at all: lm-eval's default
        return min(local + windows, default=2048)

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """As HFLM over a raw base. Where the base reads a prompt format, as lm-eval under a chat template: no
        target delimiter (a choice's leading whitespace goes), since a formatted prompt ends where the answer
        begins ("Answer:\n", "<|assistant|>\n"), and a choice scored after a stray space loses to one that is not
        (the tiny recipe once preferred a refusal to its own greedy answer on every benign prompt); and the
        choice is tokenised on its own, as it follows the rendered prompt, not merged into the context's text."""
        base = self.composer.plan.base
        if isinstance(self.composer.plan.formats[base.group][base.format], Raw):
            return super().loglikelihood(requests, disable_tqdm)
        tokens = []
        for context, continuation in (request.args for request in requests):
            choice = continuation.lstrip() or continuation
            context_ids = self.tok_encode(context.rstrip()) if context.strip() else [self.prefix_token_id]
            tokens.append(((context, continuation), context_ids, self.tok_encode(choice, add_special_tokens=False)))
        return self._loglikelihood_tokens(tokens, disable_tqdm=disable_tqdm)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: object) -> list[int]:
        """HFLM's encoding: the tokenizer's special tokens, unless the text already starts with the prefix."""
        if add_special_tokens is None:
            add_special_tokens = not has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: object
    ) -> list[tuple[float, bool]]:
        """Batches of continuations of one length, so that the scored positions are every row's last columns and
        schedule step t falls on the same column in each; longest contexts first, as HFLM; results in order."""
        for key, _, continuation in requests:
            if not continuation:
                raise UserInputError(
                    f"the continuation of {key!r} has no tokens of its own (empty, or merged into the context's last "
                    "token); give each a visible text of its own"
                )
            if len(continuation) > self.max_length:
                raise UserInputError(
                    f"the continuation of {key!r} is {len(continuation)} tokens, longer than the members' context "
                    f"window of {self.max_length}; shorten it"
                )
        collator = Collator(
            requests, sort_fn=lambda r: -len(r[1]), group_fn=lambda r: {"length": len(r[2])}, group_by="gen_kwargs"
        )
        results: list[tuple[float, bool]] = []
        for batch in tqdm(list(collator.get_batched(n=self.batch_size)), disable=disable_tqdm, desc="loglikelihood"):
            scores = self._score(batch)
            for (key, _, _), score in zip(batch, scores, strict=True):
                if key is not None:  # a rolling window: its text is cached whole, by loglikelihood_rolling
                    self.cache_hook.add_partial("loglikelihood", key, score)
            results += scores
        return collator.get_original(results)

    def _score(self, batch: list[TokenRequest]) -> list[tuple[float, bool]]:
        """One uncached forward per stream over context + continuation, the composition at the positions that
        predict the continuation, schedule step t at continuation token t (as ``Composer.score``)."""
        composer, plan = self.composer, self.composer.plan
        width = len(batch[0][2])
        rows = [
            [
                self._fit(self._context(fmt, model.tokenizer, key, context) + continuation[:-1], key)
                for fmt in formats
                for key, context, continuation in batch
            ]
            for model, formats in zip(composer.models, plan.formats, strict=True)
        ]
        table, _ = row_weights(composer.objectives, len(batch), None, composer.override_guards)
        session = composer.session_over(rows, table)
        logits = session.compose(session.tail_logits(width), first_step=0).logits
        ids = torch.tensor([continuation for _, _, continuation in batch], device=logits.device)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)
        greedy = (logits.argmax(-1) == ids).all(-1)
        return list(zip(logprobs.tolist(), greedy.tolist(), strict=True))

    def _fit(self, row: list[int], key: tuple[str, str] | None) -> list[int]:
        """HFLM's cut of a context that does not fit: the last ``max_length`` tokens predict the continuation."""
        if len(row) > self.max_length:
            logger.warning("%r: %d tokens, cut to the last %d from the left", key, len(row), self.max_length)
        return row[-self.max_length :]

    @staticmethod
    def _context(
        fmt: PromptFormat, tokenizer: PreTrainedTokenizerBase, key: tuple[str, str] | None, context: list[int]
    ) -> list[int]:
        """lm-eval's context tokens for a raw member, and where there is no context text (an empty context, a
        rolling window); otherwise the member's format of the text, less its trailing whitespace (lm-eval moves
        it into the continuation)."""
        if key is None or not key[0].strip() or isinstance(fmt, Raw):
            return context
        return fmt.render(key[0].rstrip(), tokenizer)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood over HFLM's disjoint rolling windows, the first conditioned on the prefix."""
        per_text = [
            [
                (None, *make_disjoint_window(pair))
                for pair in get_rolling_token_windows(
                    token_list=self.tok_encode(request.args[0]),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            for request in requests
        ]
        scores = iter(self._loglikelihood_tokens([w for windows in per_text for w in windows], disable_tqdm))
        totals = [sum(next(scores)[0] for _ in windows) for windows in per_text]
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Requests that share generation settings run as batches, results in request order. Every group's
        settings are checked before anything is generated."""
        results: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        configs = [self._decoding(requests[indices[0]].args[1]) for indices in groups.values()]
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for indices, config in zip(groups.values(), configs, strict=True):
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                contexts = [self._fit_text(requests[i].args[0], config.max_new_tokens) for i in chunk]
                completions = self.composer.generate(contexts, config)
                for i, completion in zip(chunk, completions, strict=True):
                    results[i] = completion.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
                bar.update(len(chunk))
        bar.close()
        return results

    def _fit_text(self, context: str, new_tokens: int) -> str:
        """A context too long to leave room for ``new_tokens``, cut from the left, as HFLM cuts it, to the longest
        ending that every member's rendering fits into that member's context window. The cut is made in the text
        (at a character), so that no member reads half a character; each member keeps its format's start."""
        windows = [
            (model, fmt)
            for model, formats in zip(self.composer.models, self.composer.plan.formats, strict=True)
            if model.context_window is not None
            for fmt in formats
        ]

        def fits(text: str) -> bool:
            return all(len(fmt.render(text, m.tokenizer)) + new_tokens <= m.context_window for m, fmt in windows)

        if fits(context):
            return context
        low, high = 0, len(context)  # context[high:] fits or is empty, context[low:] does not fit
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(context[middle:]) else (middle, high)
        if not context[high:].strip():  # no room for any text: an empty prompt would be refused as the user's
            raise UserInputError(
                f"max_gen_toks={new_tokens} leaves no room for a context within the members' context windows; "
                "lower max_gen_toks"
            )
        logger.warning("a context of %d characters is cut to its last %d", len(context), len(context) - high)
        return context[high:]

    def _decoding(self, gen_kwargs: dict) -> DecodingConfig:
        """lm-eval's normalisation (token-budget aliases; greedy unless sampling is asked for), then every
        setting by its DecodingConfig name. HFLM hands unknown keys to generate(), which refuses them: so here."""
        unknown = sorted(set(gen_kwargs) - GEN_KWARGS)
        if unknown:
            raise UserInputError(
                f"generation_kwargs {unknown} are not supported by proxy-composer; use only {sorted(GEN_KWARGS)}"
            )
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = [s for s in kwargs.pop("until") if s]  # HFLM skips empty (and null) stop strings too
        max_new_tokens = kwargs.pop("max_gen_toks")
        if not kwargs["do_sample"]:
            kwargs.pop("temperature", None)  # lm-eval sets 0.0 for greedy; the composer ignores it there
        return DecodingConfig(max_new_tokens=max_new_tokens, stop=tuple(until), **kwargs)


def _whole(name: str, value: Any) -> int:
    """lm-eval hands numbers as given on its command line: 4, '4'; its 'auto' sizes are HFLM's own."""
    if isinstance(value, int | str) and not isinstance(value, bool) and str(value).isdigit() and int(value) > 0:
        return int(value)
    raise UserInputError(f"{name}={value!r}: give a whole number above 0")


def _override(key: str, value: Any) -> str:
    """A model_args entry as the Hydra override it spells: lm-eval has already read 'true' and '0.3' as values."""
    if key.startswith("~") and value in ("", None):
        return key
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={text}"


def _place(cfg: DictConfig, device: str) -> None:
    """lm-eval's ``--device`` (cuda:0 unless given) for the models that the recipe leaves unplaced. One this
    machine lacks is passed over, as HFLM falls back to the devices there are."""
    if not device_available(device):
        logger.info("device %r is not on this machine: the recipe's placement stands", device)
        return
    with open_dict(cfg):
        for _, node in model_nodes(cfg):
            if node.device is None and node.device_map is None:
                node.device = device


def main(argv: Sequence[str]) -> int:
    """``proxy-compose lm-eval ARGS``: lm-eval's own command line, with ``--model proxy-composer`` known to it."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except (ValueError, TypeError, FileNotFoundError) as err:
        if _checks_arguments(err):
            raise UserInputError(str(err)) from None
        raise
    return 0


def _checks_arguments(err: BaseException) -> bool:
    """Did lm-eval raise ``err`` while checking its arguments (unknown tasks, no --tasks, a missing config)?"""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    where = Path(last.filename)
    checking = where.parent.name in ("config", "_cli") or (where.name, last.name) == ("evaluator.py", "simple_evaluate")
    return "lm_eval" in where.parts and checking
