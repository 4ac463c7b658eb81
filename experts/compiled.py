"""torch.compile for decoding steps (the forwards that extend a cache), over transformers' own growing cache.

On the CPU a small model's decoding step is bound by Python and per-op dispatch, not by its weights; inductor
fuses the norms, rotary positions and activations into generated C++, and the tiny family's plain decoding
at batch 1 runs ~1.4x faster (README, Compiled steps). Steps are compiled with dynamic shapes: once a
cache length or batch size has changed, one graph per model serves them all, one for one-token steps and one
for wider ones (a speculative round's verification). The prefill runs eagerly, once per batch.

Every Llama-like model runs the same ``forward`` code, and dynamo keeps its compiled graphs per code object,
eight by default, which a base and a stack of small models already fill; the limit is raised while a
compiled step runs. Where compilation fails (no C++ compiler, an architecture dynamo cannot trace whole),
that model warns once and runs eagerly for the rest of the process.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch._dynamo import config as dynamo_config
from torch._dynamo.exc import TorchDynamoException

from experts.errors import first_line

RECOMPILE_LIMIT = 64

_FAILED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # compilation failed: eager for the process's life


class CompiledStep:
    """A model's forward compiled for decoding steps; ``None`` from ``__call__`` means: run it eagerly.

    Dynamo keeps the graphs with the code, guarded by the model, so a new session's step reuses them. The
    step is one whole graph (``fullgraph``): a part that dynamo cannot trace fails the compilation before any
    of it runs, rather than after earlier parts have appended to the cache.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.step = torch.compile(model, dynamic=True, fullgraph=True)

    def __call__(self, **inputs: torch.Tensor | object) -> torch.Tensor | None:
        if self.model in _FAILED:
            return None
        try:
            with dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
                return self.step(**inputs).logits
        except TorchDynamoException as err:
            warnings.warn(f"decoding eagerly: torch.compile failed ({first_line(err)})", stacklevel=2)
            _FAILED.add(self.model)
            return None
