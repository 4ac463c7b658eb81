"""The Composer as an lm-evaluation-harness model, registered as ``proxy-composer``.

Unlike ``HFLM`` over ``ComposedForCausalLM``, this adapter knows where the context ends, so every member
sees its own prompt format (chat experts get their template) and schedules count continuation tokens.
Tokenisation is lm-eval's own (``TemplateLM``): the context's trailing whitespace moves into the continuation,
an empty context is the prefix token alone, and long texts are cut into HFLM's rolling windows, so that a
recipe without prompt formats scores exactly as ``HFLM`` does.
Import this module before ``lm_eval.simple_evaluate`` (lm-eval 0.4 has no entry-point plug-ins).
"""

from __future__ import annotations

from dataclasses import fields

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, has_bos_prefix, normalize_gen_kwargs, resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from composer.decoding import DecodingConfig
from composer.engine import Composer
from composer.weights import row_weights
from experts.errors import UserInputError
from experts.prompts import PromptFormat, Raw

# A request as TemplateLM hands it to _loglikelihood_tokens: (context, continuation) text, or None for a
# rolling window, which has no text; then the context's and the continuation's token ids.
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]
# The generation_kwargs a task may set: lm-eval's stop strings and token budget (normalize_gen_kwargs folds the
# budget's aliases into max_gen_toks), then DecodingConfig's settings by their own names. generate_until returns
# one text per request, so num_return_sequences has no place; ``until`` is lm-eval's name for the stop strings.
TOKEN_BUDGET = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
GEN_KWARGS = {"until", *TOKEN_BUDGET, *({f.name for f in fields(DecodingConfig)} - {"stop", "num_return_sequences"})}


@register_model("proxy-composer")
class ComposerLM(TemplateLM):
    def __init__(self, composer: Composer, batch_size: int = 8, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.composer = composer
        self.tokenizer = composer.tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is conditioned on, as in HFLM: the start token, else the end token."""
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    @property
    def max_length(self) -> int:
        """The shortest context window among the members: every member reads each rolling window."""
        return min(resolve_max_length(m.model.config, m.tokenizer) for m in self.composer.models)

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
                raise UserInputError(f"the continuation of {key!r} has no tokens; give each visible text")
        collator = Collator(
            requests, sort_fn=lambda r: -len(r[1]), group_fn=lambda r: {"length": len(r[2])}, group_by="gen_kwargs"
        )
        results: list[tuple[float, bool]] = []
        for batch in tqdm(list(collator.get_batched(n=self.batch_size)), disable=disable_tqdm, desc="loglikelihood"):
            results += self._score(batch)
        return collator.get_original(results)

    def _score(self, batch: list[TokenRequest]) -> list[tuple[float, bool]]:
        """One uncached forward per stream over context + continuation, the composition at the positions that
        predict the continuation, schedule step t at continuation token t (as ``Composer.score``)."""
        composer, plan = self.composer, self.composer.plan
        width = len(batch[0][2])
        rows = [
            [
                self._context(fmt, model.tokenizer, key, context) + continuation[:-1]
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

    @staticmethod
    def _context(
        fmt: PromptFormat, tokenizer: PreTrainedTokenizerBase, key: tuple[str, str] | None, context: list[int]
    ) -> list[int]:
        """lm-eval's context tokens for a raw member, and where there is no context text (an empty context, a
        rolling window); otherwise the member's format of the text, less the whitespace that ``_encode_pair``
        moved into the continuation."""
        if key is None or not key[0] or isinstance(fmt, Raw):
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
        return [sum(next(scores)[0] for _ in windows) for windows in per_text]

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
                completions = self.composer.generate([requests[i].args[0] for i in chunk], config)
                for i, completion in zip(chunk, completions, strict=True):
                    results[i] = completion.text
                bar.update(len(chunk))
        bar.close()
        return results

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
