"""A model stream with fixed shapes, so that its decoding step can be replayed as a CUDA graph.

On a GPU, a 7B model's eager decoding step is bound by the host: Python and kernel launches take several
times as long as reading the weights. Here the KV cache (transformers' ``StaticCache``) and the attention
mask are allocated once at their final width; a one-token step then has the same shapes and addresses every
time, is captured once and replayed, and the host launches one graph instead of hundreds of kernels. On the
CPU, or with graphs off, the same fixed-shape step runs eagerly (which is what the tests check it against).
"""

from __future__ import annotations

import warnings

import torch
from transformers import StaticCache

from experts.stream import ModelStream


class StaticStream(ModelStream):
    """``ModelStream`` over a cache of ``capacity`` tokens beyond the prompt, graph-replaying one-token steps."""

    def __init__(self, model: torch.nn.Module, pad_id: int, capacity: int) -> None:
        super().__init__(model, pad_id)
        self.joinable = False  # a fixed-shape cache takes no rows in
        self.capacity = capacity
        self.graphs = self.device.type == "cuda"  # off once a capture fails
        self.full = self.mask  # the mask at its final width; ``mask`` is its first ``used`` columns
        self.used = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._output: torch.Tensor | None = None
        self._weights: list[torch.Tensor] = []

    def _fresh_cache(self, mask: torch.Tensor) -> None:
        self.full = torch.zeros(
            (mask.shape[0], self.prompt_width + self.capacity), dtype=mask.dtype, device=self.device
        )
        self.full[:, : self.prompt_width] = mask
        self._use(self.prompt_width)
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.full.shape[1])
        self._graph = self._inputs = self._output = None

    def _attention_mask(self) -> torch.Tensor:
        return self.full  # at its final width, zeros beyond the columns used, as the static cache expects

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device)
        n = tokens.shape[1]
        if self.used + n > self.full.shape[1]:
            raise RuntimeError(f"static cache full: {self.capacity} tokens after the prompt were allotted")
        positions = self.mask.sum(-1, keepdim=True) + torch.arange(n, device=self.device)
        self.full[:, self.used : self.used + n] = 1
        self._use(self.used + n)
        if n == 1 and self.graphs:
            return self._replay(tokens, positions)
        return self._forward(tokens, positions)

    def _replay(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self._graph is None and not self._capture(tokens, positions):
            return self._forward(tokens, positions)
        self._inputs[0].copy_(tokens)
        self._inputs[1].copy_(positions)
        self._graph.replay()
        return self._output.clone()  # the graph overwrites its output at the next replay

    def _capture(self, tokens: torch.Tensor, positions: torch.Tensor) -> bool:
        """Record this step. The warm-up run writes this step's keys and values, which the replay writes again."""
        self._inputs = (tokens.clone(), positions.clone())
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self._forward(*self._inputs)  # kernels that initialise lazily must not do so during the capture
        main.wait_stream(side)
        self.cache.crop(-1)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._output = self._forward(*self._inputs)
        except RuntimeError as err:  # an architecture whose step reads values on the host cannot be captured
            warnings.warn(f"decoding without CUDA graphs: the step could not be captured ({err})", stacklevel=2)
            self.graphs = False
            return False
        self._graph = graph
        # the graph reads the weights at their addresses now: hold those storages, in case the model's parameters
        # are moved while it replays (a stack released elsewhere gives its members weights of their own)
        self._weights = [p.detach() for p in self.model.parameters()]
        return True

    @torch.inference_mode()
    def crop(self, generated: int) -> None:
        width = self.prompt_width + generated
        surplus = self.used - width
        if surplus > 0:
            self.cache.crop(-surplus)
            self.full[:, width : self.used] = 0
            self._use(width)

    @torch.inference_mode()
    def retract(self, keep: torch.Tensor, appended: int) -> None:
        width = int(keep.max())
        self.crop(self.used - self.prompt_width - appended + width)
        kept = torch.arange(width, device=self.device) < keep.to(self.device).unsqueeze(1)
        self.full[:, self.used - width : self.used] = kept.to(self.full.dtype)
        self._use(self.used)

    @torch.inference_mode()
    def select(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.device)
        self.cache.reorder_cache(rows)
        self.full = self.full.index_select(0, rows)
        self._use(self.used)
        self._graph = self._inputs = self._output = None  # new shapes and addresses: capture again

    def _use(self, used: int) -> None:
        self.used = used
        self.mask = self.full[:, :used]
