"""The composition as a transformers model, so stock ``generate()`` and lm-eval's ``HFLM`` run on it.

``forward`` is the session primitive: the first call (empty cache) prefills every stream, later calls
append tokens. The composite cache is the session: generate() crops it (assisted decoding), reorders it
(beam search) and reads its length without knowing that it holds one cache per unique set of weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from composer.engine import Composer
from composer.schedules import Constant
from composer.session import Session, render_rows
from composer.weights import row_weights
from experts.compat import CACHE_ARG
from experts.errors import UserInputError
from experts.prompts import Raw


class CompositeCache(Cache):
    """One session's member caches behind transformers' Cache interface, counted in base-prompt positions."""

    is_compileable = False

    def __init__(self) -> None:
        super().__init__(layers=[])
        self.session: Session | None = None
        self.prompt_width = 0
        self.rolls_back = False  # will transformers crop it (assisted decoding)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.session is None else self.prompt_width + self.session.generated

    def crop(self, max_length: int) -> None:
        """Keep ``max_length`` positions; zero or less removes that many, as transformers 5 calls it."""
        if max_length <= 0:
            max_length = self.get_seq_length() + max_length
        self.session.crop(min(max_length - self.prompt_width, self.session.generated))  # longer: nothing to cut

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.session.select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.session.select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.session.select(torch.arange(self.session.batch).repeat_interleave(repeats))

    def activate_past_recording(self, **kwargs: Any) -> None:
        """transformers will crop: sliding-window members keep their whole past. Before the prefill (assisted
        decoding), the session is built to take columns back; after it (a stop check that rolls back), each
        member cache records, as transformers' own. ``kwargs``: transformers 5.25 passes the recurrent states to
        keep, which attention caches (the only ones a member may have) take and ignore."""
        self.rolls_back = True
        for unit in [] if self.session is None else self.session.units:
            unit.stream.cache.activate_past_recording(**kwargs)


class ComposedForCausalLM(PreTrainedModel, GenerationMixin):
    """A ``Composer`` that transformers treats as a causal LM with the base's config and vocabulary.

    Per-row weights: pass ``steering_weights`` (B, K) to ``generate()``; schedules count generated tokens
    from the first forward. An uncached forward over whole sequences (lm-eval's loglikelihood) composes
    every position with the weights of step 0.
    """

    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _is_stateful = False

    def __init__(self, composer: Composer) -> None:
        base = composer.models[composer.plan.base.group]
        if base.model is None:
            raise UserInputError(
                "ComposedForCausalLM needs a local base (an endpoint has no config or cache); use Composer.generate, "
                "or lm-eval through composer.evaluation.lm_eval_model.ComposerLM"
            )
        config = copy.deepcopy(base.model.config)
        config._experts_implementation_internal = None  # an MoE base's: this shell runs no MoE layer of its own
        super().__init__(config)
        self.composer = composer
        self.generation_config = copy.deepcopy(base.model.generation_config)
        self._anchor = torch.nn.Parameter(torch.empty(0, device=base.device), requires_grad=False)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.composer.models[self.composer.plan.base.group].model.get_input_embeddings()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs) -> None:  # noqa: ANN001
        if model_kwargs.get(CACHE_ARG) is None and generation_config.use_cache is not False:
            model_kwargs[CACHE_ARG] = CompositeCache()

    def generate(self, *args: Any, steering_weights: Any = None, **kwargs: Any) -> Any:
        """``GenerationMixin.generate``, where ``steering_weights`` may also be a nested list: made a tensor
        first, so that transformers repeats its rows for beams and samples as it does the input's."""
        if steering_weights is not None:
            kwargs["steering_weights"] = _weight_tensor(steering_weights, [o.name for o in self.composer.objectives])
        return super().generate(*args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        steering_weights: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        use_cache: bool | None = None,
        **kwargs: object,
    ) -> CausalLMOutputWithPast:
        """The cache arrives as ``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if cache is not None and not isinstance(cache, CompositeCache):
            raise UserInputError("ComposedForCausalLM needs its own cache; do not pass a member's cache")
        if cache is None:
            logits = self._compose_every_position(input_ids, attention_mask, steering_weights)
        elif cache.session is None:
            logits = self._start_session(cache, input_ids, attention_mask, steering_weights, logits_to_keep)
        else:
            logits = cache.session.extend(input_ids).logits
        logits = self._full_width(logits)
        labels = kwargs.get("labels")
        if labels is not None and cache is not None:
            raise UserInputError("labels need an uncached forward over whole sequences: pass use_cache=False")
        loss = None if labels is None else self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1])
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_ARG: cache})

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        """There are no weights of its own to save: the members are the models, the recipe says how."""
        raise UserInputError(
            "ComposedForCausalLM holds no weights of its own; save the recipe (its members' paths and weights), "
            "or each member with its own save_pretrained"
        )

    def _weights(self, batch: int, steering_weights: torch.Tensor | None) -> torch.Tensor:
        names = [o.name for o in self.composer.objectives]
        if steering_weights is not None:
            steering_weights = _weight_tensor(steering_weights, names)
        if steering_weights is not None and tuple(steering_weights.shape) != (batch, len(names)):
            raise UserInputError(
                f"steering_weights has shape {tuple(steering_weights.shape)}; give ({batch}, {len(names)}): "
                f"one row per sequence, one column per objective {names}"
            )
        rows = (
            None if steering_weights is None else [dict(zip(names, r, strict=True)) for r in steering_weights.tolist()]
        )
        return row_weights(self.composer.objectives, batch, rows, self.composer.override_guards)[0]

    def _rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[str], list[list[int]]]:
        ids = [row[mask.bool()].tolist() for row, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)]
        texts = self.composer.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [t or " " for t in texts], ids

    def _start_session(
        self, cache: CompositeCache, ids: torch.Tensor, mask: torch.Tensor, steering: torch.Tensor | None, keep: int
    ) -> torch.Tensor:
        """Prefill the prompt; the last ``keep - 1`` tokens are drafted candidates (assisted decoding's first
        call), appended as generated tokens so that their logits and schedule steps are those of decoding."""
        drafted = max(keep, 1) - 1
        prompt_ids, prompt_mask = ids[:, : ids.shape[1] - drafted], mask[:, : ids.shape[1] - drafted]
        composer = self.composer
        texts, rows_ids = self._rows(prompt_ids, prompt_mask)
        rows = render_rows(composer.plan, composer.models, texts, raw_ids=rows_ids)
        weights = self._weights(len(rows_ids), steering)
        cache.session = composer.session_over(rows, weights, speculative=cache.rolls_back)
        cache.prompt_width = prompt_ids.shape[1]
        logits = cache.session.start().logits
        if drafted:
            logits = torch.cat([logits, cache.session.extend(ids[:, -drafted:]).logits], dim=1)
        return logits

    def _compose_every_position(
        self, input_ids: torch.Tensor, mask: torch.Tensor, steering: torch.Tensor | None
    ) -> torch.Tensor:
        """Every position composed at once (no decode loop), as lm-eval's loglikelihood asks.

        Without a cache there is no boundary between prompt and continuation, so per-member prompt formats
        and schedules cannot be placed; those recipes are refused rather than composed wrongly.
        """
        composer, plan = self.composer, self.composer.plan
        if any(not isinstance(f, Raw) for formats in plan.formats for f in formats):
            raise UserInputError(
                "an uncached forward cannot apply chat or template formats; use Composer.score, the "
                "'proxy-composer' lm-eval model, or generate() with its cache"
            )
        if any(not isinstance(o.schedule, Constant) for o in plan.objectives):
            raise UserInputError("an uncached forward cannot place schedule steps; use generate() with its cache")
        texts, ids = self._rows(input_ids, mask)
        rows = render_rows(plan, composer.models, texts, raw_ids=ids)
        weights = self._weights(len(ids), steering)
        session = composer.session_over(rows, weights)
        lengths = torch.tensor([len(r) for r in ids])
        composed = session.compose(session.tail_logits(int(lengths.max())), first_step=0).logits
        return _at_input_positions(composed, mask, lengths)

    def _full_width(self, logits: torch.Tensor) -> torch.Tensor:
        """Pad the shared vocabulary back to the base's logit width, so shapes match the base model."""
        missing = self.config.vocab_size - logits.shape[-1]
        if missing <= 0:
            return logits
        return torch.nn.functional.pad(logits, (0, missing), value=float("-inf"))


def _at_input_positions(composed: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits laid out as the input was: the session right-aligns each row's real tokens, the caller may pad on
    either side or add pad columns. Pad positions get zeros (a uniform distribution, never NaN downstream)."""
    mask = mask.to(composed.device).bool()
    rank = mask.long().cumsum(-1) - 1  # the j-th real token of its row
    source = rank + (composed.shape[1] - lengths.to(composed.device)).unsqueeze(1)
    gathered = composed.gather(1, source.clamp(min=0).unsqueeze(-1).expand(-1, -1, composed.shape[-1]))
    return gathered.masked_fill(~mask.unsqueeze(-1), 0.0)


def _weight_tensor(weights: Any, names: list[str]) -> torch.Tensor:
    """Per-row weights (B, K) as a tensor, from a tensor or nested lists."""
    if isinstance(weights, torch.Tensor):
        return weights
    try:
        return torch.as_tensor(weights, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(
            f"steering_weights={weights!r}: give a (batch, {len(names)}) tensor or nested list of numbers, "
            f"one column per objective {names}"
        ) from None
