"""Host-to-accelerator copies that do not stall the host.

A copy from ordinary (pageable) host memory makes the host wait until the accelerator's queue has drained:
one such copy per decoding step turns the step into a host sync. Staged through pinned memory, the copy is
queued like any kernel and the host goes on launching the next ones.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor.to(device, dtype)``, without a host sync when it goes from host memory to a CUDA device."""
    if tensor.device == device and dtype in (None, tensor.dtype):
        return tensor  # the common case in a decoding step, where even a no-op ``to`` costs dispatch
    if dtype is not None and tensor.device.type == "cpu":
        tensor = tensor.to(dtype)  # convert the few host values before the copy, not after it
    if tensor.device.type != "cpu" or device.type != "cuda":
        return tensor.to(device=device, dtype=dtype)
    return tensor.pin_memory().to(device, non_blocking=True)
