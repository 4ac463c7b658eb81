"""One CUDA stream per unit, so that the models of a step run side by side on the accelerator.

The host launches each unit's kernels on its own stream (its lane) and the main stream waits for every lane
before the composition reads their logits. Each lane first waits for the main stream, and the main stream
waits for all lanes before any further work is queued on it, so the work before and after a step is
ordered as on a single stream: memory freed on one stream and reused on another is never used by both at
once, and no ``record_stream`` bookkeeping is needed. Units off CUDA run in order on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

Outputs = dict[int, torch.Tensor]


class Lanes:
    def __init__(self, devices: Sequence[torch.device], enabled: bool = True) -> None:
        """``devices[u]`` is unit u's device; lanes exist only where two or more units share CUDA."""
        on_cuda = [d for d in devices if d.type == "cuda"]
        use = enabled and len(on_cuda) >= 2
        self.streams = [torch.cuda.Stream(d) if use and d.type == "cuda" else None for d in devices]

    def run(self, calls: Mapping[int, Callable[[], Outputs]]) -> Outputs:
        """Each ``calls[u]`` on unit u's lane, launched in order; their outputs merged, safe to read on return."""
        outputs: Outputs = {}
        joins: list[tuple[torch.cuda.Stream, torch.cuda.Stream]] = []
        for unit, call in calls.items():
            lane = self.streams[unit]
            if lane is None:
                outputs.update(call())
                continue
            main = torch.cuda.current_stream(lane.device)
            lane.wait_stream(main)
            with torch.cuda.stream(lane):
                outputs.update(call())
            joins.append((main, lane))
        for main, lane in joins:
            main.wait_stream(lane)
        return outputs
