"""Same-architecture models run as one forward: weights stacked on a model axis, the batch split per model.

Experts and anti-experts are usually fine-tunes of one architecture (Llama-2-7b-chat and Llama-2-7b; the
tiny experts and tiny-small). Run one by one, each pays a full pass of Python and kernel launches per step.
Stacked, every linear layer is one batched matmul over the models, while attention, rotary positions, masks
and the KV cache stay transformers' own, over a batch that holds each model's rows in turn. Each member's
parameters become views into the stacked tensors, so the weights stay in memory once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cache

import torch
from torch import nn
from torch.func import functional_call, vmap

from experts.loading import LoadedModel, ModelSpec, load

_NAME_KEYS = {"_name_or_path", "_commit_hash", "transformers_version", "architectures"}


def signature(loaded: LoadedModel) -> tuple | None:
    """Models with equal signatures compute the same function of their weights; None: never stacked
    (spread over several devices by a device map)."""
    model = loaded.model
    if loaded.spec.device_map is not None:
        return None
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NAME_KEYS}
    dtype = next(model.parameters()).dtype
    return (type(model), repr(sorted(config.items())), dtype, loaded.device)


def stack_groups(models: Sequence[LoadedModel], alone: int | None = None) -> list[list[int]]:
    """Indices of ``models`` partitioned into stacks of equal signature, in order of first appearance.

    ``alone`` (the base) always runs by itself: stacked with the small models it would run at every
    drafted token of speculative decoding.
    """
    units: dict[object, list[int]] = {}
    for index, loaded in enumerate(models):
        key = signature(loaded)
        key = ("alone", index) if key is None or index == alone else key
        units.setdefault(key, []).append(index)
    return list(units.values())


def stacked(models: Sequence[LoadedModel]) -> nn.Module:
    """One module computing every member's forward over its share of the batch (members in order).

    Built once per tuple of specs. Raises ValueError for architectures with parameters outside leaf
    modules, which this does not know how to split.
    """
    return _stacked_cached(tuple(m.spec for m in models))


@cache
def _stacked_cached(specs: tuple[ModelSpec, ...]) -> nn.Module:
    members = [load(spec).model for spec in specs]
    first = members[0]
    with torch.device("meta"):
        shell = type(first)(first.config)
    shell.eval()
    shared: dict[int, torch.Tensor] = {}
    for name, module in first.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        if any(True for _ in module.children()):
            raise ValueError(f"{type(first).__name__}.{name} holds parameters outside a leaf module")
        weights = {
            p: _stack([m.get_submodule(name).get_parameter(p) for m in members], params[p], shared) for p in params
        }
        shell.set_submodule(name, _stacked_leaf(module, weights))
    for name, buffer in first.named_buffers():
        owner, _, attr = name.rpartition(".")
        setattr(shell.get_submodule(owner), attr, buffer)  # rotary tables: equal for equal configs
    if any(t.is_meta for t in [*shell.parameters(), *shell.buffers()]):
        raise ValueError(f"{type(first).__name__} keeps state this stacking does not know")
    return shell


def _stack(params: list[nn.Parameter], key: nn.Parameter, shared: dict[int, torch.Tensor]) -> torch.Tensor:
    """The members' tensors on a new leading axis; the members' parameters then view into it."""
    if id(key) not in shared:  # tied weights (lm_head = embeddings) are stacked once
        with torch.no_grad():
            together = torch.stack([p.detach() for p in params])
        for index, param in enumerate(params):
            param.data = together[index]
        shared[id(key)] = together
    return shared[id(key)]


def _stacked_leaf(module: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    if type(module) is nn.Linear:
        return StackedLinear(weights["weight"], weights.get("bias"))
    if type(module) is nn.Embedding:
        return StackedEmbedding(weights["weight"])
    return StackedLeaf(module, weights)


def _per_member(x: torch.Tensor, members: int) -> torch.Tensor:
    """(members * rows, ...) -> (members, rows * ..., last): the batch's leading rows belong to member 0."""
    return x.reshape(members, -1, x.shape[-1])


class StackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(_per_member(x, self.weight.shape[0]), self.weight.transpose(1, 2))
        if self.bias is not None:
            out = out + self.bias.unsqueeze(1)
        return out.reshape(*x.shape[:-1], out.shape[-1])


class StackedEmbedding(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        members, vocab = self.weight.shape[:2]
        offsets = torch.arange(members, device=ids.device).unsqueeze(1) * vocab
        flat = (ids.reshape(members, -1) + offsets).reshape(ids.shape)
        return nn.functional.embedding(flat, self.weight.reshape(members * vocab, -1))


class StackedLeaf(nn.Module):
    """Any other leaf (norms): the member's own forward, vectorised over the model axis with ``vmap``."""

    def __init__(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.__dict__["template"] = copy.deepcopy(module).to("meta")  # code only: not a registered submodule
        self.names = list(weights)
        for name, tensor in weights.items():
            self.register_parameter(name.replace(".", "_"), nn.Parameter(tensor, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {name: getattr(self, name.replace(".", "_")) for name in self.names}
        members = next(iter(weights.values())).shape[0]
        grouped = x.reshape(members, x.shape[0] // members, *x.shape[1:])
        out = vmap(lambda w, xs: functional_call(self.template, w, (xs,)))(weights, grouped)
        return out.reshape(x.shape[0], *out.shape[2:])
