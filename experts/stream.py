"""One model advancing several prompt formats as rows of a single left-padded batch with one KV cache.

Rows are laid out format-major: row ``f * batch + b`` is prompt ``b`` in format ``f``. Running all
formats of one set of weights as one batch is what makes prompted experts nearly free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from experts.compat import CACHE_ARG
from experts.compiled import CompiledStep
from experts.errors import UserInputError
from experts.loading import LoadedModel


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (R, L): rows right-aligned so that the next token is at the same column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, as transformers' generate() builds them."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def check_fits(loaded: LoadedModel, lengths: list[int], extra: int) -> None:
    """Refuse rows that cannot run: empty after tokenisation, or beyond the context window."""
    if min(lengths) == 0:
        raise UserInputError(
            f"a prompt has no tokens for model {loaded.spec.name!r} (only whitespace?); give it visible text"
        )
    window = loaded.context_window
    if window is None:
        return
    longest = max(lengths)
    if longest > window:
        raise UserInputError(
            f"a prompt is {longest} tokens but model {loaded.spec.name!r} has a context window of "
            f"{window}; shorten the prompt"
        )
    if longest + extra > window:
        raise UserInputError(
            f"a prompt of {longest} tokens plus max_new_tokens={extra} exceeds the {window}-token context "
            f"window of {loaded.spec.name!r}; lower max_new_tokens or shorten the prompt"
        )


class ModelStream:
    """Cached incremental forward passes of one model (or one stack of models) over a fixed set of rows.

    ``compiled`` runs the steps after the prefill through ``torch.compile`` (``experts.compiled``).
    ``rolls_back`` (speculative decoding) keeps a sliding-window model's whole past, so that ``crop`` and
    ``retract`` can take columns back (see ``retract``).
    """

    def __init__(self, model: torch.nn.Module, pad_id: int, compiled: bool = False, rolls_back: bool = False) -> None:
        self.model = model
        self.compiled = CompiledStep(model) if compiled else None
        # a sliding window counts cache columns: transformers' sliding layers keep the last ones only, and
        # cannot be cropped once full; full layers can, the mask still applying the window
        layers = DynamicCache(config=model.config).layers
        self.windowed = rolls_back and any(getattr(layer, "is_sliding", False) for layer in layers)
        # a plain attention cache (no window, no indexer) takes other rows in by padding them to one width
        self.joinable = not rolls_back and all(type(layer) is DynamicLayer for layer in layers)
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.mask = torch.empty(0, 0, dtype=torch.long, device=self.device)
        self.prompt_width = 0
        self.cache: DynamicCache | None = None

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelStream:
        return cls(loaded.model, loaded.tokenizer.pad_token_id)

    @torch.inference_mode()
    def start(self, rows: list[list[int]]) -> torch.Tensor:
        """Prefill ``rows`` into a fresh cache; returns the logits after each row's last token, (R, V)."""
        ids, mask = left_pad(rows, self.pad_id, self.device)
        self.prompt_width = ids.shape[1]
        self._fresh_cache(mask)
        return self._checked(self._forward(ids, positions_from_mask(mask), logits_to_keep=1)[:, -1])

    def _checked(self, logits: torch.Tensor) -> torch.Tensor:
        """NaN logits, checked once per prompt batch (a NaN in the past reaches every later step), would pass
        through the composition as token 0; transformers' eager attention gives them in float64 over
        left-padded rows (its softmax runs in float32, turning the mask's float64 minimum into -inf)."""
        if bool(torch.isnan(logits).any()):
            raise UserInputError(
                f"{type(self.model).__name__} returned NaN logits for these prompts (float64 with eager attention "
                "over padded rows does: its softmax runs in float32); run the model in float32 or bfloat16, or a "
                "prompt at a time"
            )
        return logits

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (R, n) to every row; returns the logits after each of them, (R, n, V)."""
        tokens = tokens.to(self.device)
        first = self.mask.sum(-1, keepdim=True)
        positions = first + torch.arange(tokens.shape[1], device=self.device)
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)
        return self._forward(tokens, positions)

    def _fresh_cache(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.cache = DynamicCache() if self.windowed else DynamicCache(config=self.model.config)

    def _attention_mask(self) -> torch.Tensor:
        return self.mask

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, **kwargs: int) -> torch.Tensor:
        inputs = {"input_ids": tokens, "attention_mask": self._attention_mask(), "position_ids": positions}
        inputs |= {"use_cache": True, CACHE_ARG: self.cache, **kwargs}
        if self.compiled is not None and not kwargs:  # the prefill (logits_to_keep) runs eagerly
            logits = self.compiled(**inputs)
            if logits is not None:
                return logits
        return self.model(**inputs).logits

    def crop(self, generated: int) -> None:
        """Forget everything after the first ``generated`` tokens appended since the prompt."""
        width = self.prompt_width + generated
        surplus = self.mask.shape[1] - width
        if surplus > 0:
            self.cache.crop(-surplus)  # transformers 5 counts tokens to remove, as a negative number
            self.mask = self.mask[:, :width]

    def retract(self, keep: torch.Tensor, appended: int) -> None:
        """Of the last ``appended`` columns, row r keeps its first ``keep[r]``; the rest leave its attention.

        Masked columns stay in the cache (rows share one width) but no later token attends to them, and
        positions count only unmasked tokens, so each row goes on exactly as if cropped alone. A sliding
        window, which counts columns, would count them too: there each row's columns move right past the ones
        it dropped, which become left padding.
        """
        width = int(keep.max())
        self.crop(self.mask.shape[1] - self.prompt_width - appended + width)
        kept = torch.arange(width, device=self.device) < keep.to(self.device).unsqueeze(1)
        self.mask = torch.cat([self.mask[:, : self.mask.shape[1] - width], kept.to(self.mask.dtype)], dim=1)
        if self.windowed and int(keep.min()) < width:
            self._shift_right(width - keep.to(self.device))

    def _shift_right(self, shift: torch.Tensor) -> None:
        """Row r's columns move ``shift[r]`` to the right; its last ``shift[r]`` (masked) wrap to its left end."""
        width = self.mask.shape[1]
        columns = (torch.arange(width, device=self.device) - shift.unsqueeze(1)) % width
        self.mask = self.mask.gather(1, columns)
        for layer in self.cache.layers:
            index = columns[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)

    def merge(self, other: ModelStream) -> None:
        """``other``'s rows join these, after them (a server's new requests between steps): the shorter past is
        left-padded with masked columns, as a left-padded batch is, so each row goes on as it would alone."""
        if not (self.joinable and other.joinable):
            raise ValueError("only plain attention caches take rows in")
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_widen(m, width) for m in (self.mask, other.mask)])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_widen(k, width, dim=2) for k in (mine.keys, theirs.keys)])
            mine.values = torch.cat([_widen(v, width, dim=2) for v in (mine.values, theirs.values)])
        self.prompt_width = width

    def select(self, rows: torch.Tensor) -> None:
        """Keep, reorder or repeat rows (beam reordering, several samples per prompt, dropping rows)."""
        rows = rows.to(self.device)
        self.cache.reorder_cache(rows)
        self.mask = self.mask.index_select(0, rows)

    @torch.inference_mode()
    def tail_logits(self, rows: list[list[int]], keep: int) -> torch.Tensor:
        """Uncached forward over whole rows, for scoring: logits at the last ``keep`` positions, (R, keep, V)."""
        ids, mask = left_pad(rows, self.pad_id, self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            use_cache=False,
            logits_to_keep=keep,
        )
        return self._checked(out.logits)


def _widen(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """``tensor`` left-padded with zeros along ``dim`` (a mask's columns, a cache's positions) to ``width``."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    return F.pad(tensor, (0, 0) * (tensor.dim() - 1 - dim) + (missing, 0))
