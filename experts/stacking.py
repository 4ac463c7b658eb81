"""Same-architecture models run as one forward: weights stacked on a model axis, the batch split per model.

Experts and anti-experts are usually fine-tunes of one architecture (Llama-2-7b-chat and Llama-2-7b; the
tiny experts and tiny-small). Run one by one, each pays a full pass of Python and kernel launches per step.
Stacked, every linear layer is one batched matmul over the models, while attention, rotary positions, masks
and the KV cache stay transformers' own, over a batch that holds each model's rows in turn. Each member's
parameters become views into the stacked tensors, so the weights stay in memory once.

A stack lives as long as something holds it (a ``Composer`` holds the stacks its sessions ran). Once
nothing does, it is freed and its members take back weights of their own: a Hydra sweep over objective
sets in one process does not keep every set's stack.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from collections.abc import Collection, Sequence

import torch
from torch import nn
from torch.func import functional_call

from experts.loading import LoadedModel, ModelSpec

_NAME_KEYS = {"_name_or_path", "_commit_hash", "transformers_version", "architectures"}


def signature(loaded: LoadedModel) -> tuple | None:
    """Models with equal signatures compute the same function of their weights; None: never stacked (spread over
    several devices by a device map, or altered beyond what its config builds: see ``_as_built``)."""
    model = loaded.model
    if loaded.spec.device_map is not None:
        return None
    config = repr(sorted((k, v) for k, v in model.config.to_dict().items() if k not in _NAME_KEYS))
    if not _as_built(model, config):
        return None
    dtype = next(model.parameters()).dtype
    return (type(model), config, dtype, loaded.device)


def _as_built(model: nn.Module, config: str) -> bool:
    """Is ``model`` what its class builds from its config? The stack is rebuilt from the config alone, so hooks
    (a banned token) and modules put in after construction (LoRA adapters injected by PEFT, quantised layers)
    would silently drop out of a stacked member's forward."""
    if any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in model.modules()):
        return False  # hooks, or a forward replaced on the instance (accelerate's add_hook_to_module, a patch)
    return _layout(model) == _built_layout(type(model), config, model.config)


def _layout(model: nn.Module) -> tuple[tuple[str, type], ...]:
    return tuple((name, type(module)) for name, module in model.named_modules())


def _built_layout(cls: type[nn.Module], key: str, config: object) -> tuple[tuple[str, type], ...]:
    """The modules a fresh model of this class and config (``key``) has, built once on the meta device."""
    if (cls, key) not in _BUILT:
        with torch.device("meta"):
            _BUILT[cls, key] = _layout(cls(config))
    return _BUILT[cls, key]


_BUILT: dict[tuple[type, str], tuple[tuple[str, type], ...]] = {}


def stack_groups(models: Sequence[LoadedModel], alone: Collection[int] = ()) -> list[list[int]]:
    """Indices of ``models`` partitioned into stacks of equal signature, in order of first appearance.

    Indices in ``alone`` run by themselves: the base (stacked with the small models it would run at every
    drafted token of speculative decoding) and a lone draft model (stacked, its whole stack would).
    """
    units: dict[object, list[int]] = {}
    for index, loaded in enumerate(models):
        key = ("alone", index) if index in alone else signature(loaded)
        key = ("alone", index) if key is None else key
        units.setdefault(key, []).append(index)
    return list(units.values())


_LIVE: weakref.WeakValueDictionary[tuple[ModelSpec, ...], nn.Module] = weakref.WeakValueDictionary()


def stacked(models: Sequence[LoadedModel]) -> nn.Module:
    """One module computing every member's forward over its share of the batch (members in order).

    Built once per tuple of specs and shared while anything holds it. Raises ValueError for architectures
    with parameters outside leaf modules, which this does not know how to split.
    """
    specs = tuple(m.spec for m in models)
    shell = _LIVE.get(specs)
    if shell is None:
        shell = _LIVE[specs] = _build([m.model for m in models])
    return shell


def _build(members: list[nn.Module]) -> nn.Module:
    first = members[0]
    _check_splittable(first)  # before any member's parameters become views into a stack
    with torch.device("meta"):
        shell = type(first)(first.config)
    shell.eval()
    shared: dict[int, torch.Tensor] = {}
    views: list[tuple[nn.Parameter, torch.Tensor]] = []
    for name, module in first.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        modules = [m.get_submodule(name) for m in members]
        weights = {p: _stack([m.get_parameter(p) for m in modules], params[p], shared) for p in params}
        views += [(m.get_parameter(p), weights[p]) for m in modules for p in params]
        shell.set_submodule(name, _stacked_leaf(module, weights, modules))
    for name, buffer in first.named_buffers():
        owner, _, attr = name.rpartition(".")
        setattr(shell.get_submodule(owner), attr, buffer)  # rotary tables: equal for equal configs
    if any(t.is_meta for t in [*shell.parameters(), *shell.buffers()]):
        raise ValueError(f"{type(first).__name__} keeps state this stacking does not know")
    weakref.finalize(shell, _give_back, views)
    return shell


def _give_back(views: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """The stack is gone: members whose parameters still view it (no later stack took them) copy them out,
    so that the stacked tensors are freed."""
    for param, together in views:
        if param.untyped_storage().data_ptr() == together.untyped_storage().data_ptr():
            param.data = param.data.clone()


def _stack(params: list[nn.Parameter], key: nn.Parameter, shared: dict[int, torch.Tensor]) -> torch.Tensor:
    """The members' tensors on a new leading axis; the members' parameters then view into it."""
    if id(key) not in shared:  # tied weights (lm_head = embeddings) are stacked once
        with torch.no_grad():
            together = torch.stack([p.detach() for p in params])
        for index, param in enumerate(params):
            param.data = together[index]
        shared[id(key)] = together
    return shared[id(key)]


def _check_splittable(model: nn.Module) -> None:
    """Raises ValueError unless every module with parameters is a leaf that the stack can split by rows: one
    of the kinds it batches, or one whose forward takes the hidden states alone (OPT's learned positions also
    take the mask and the cache's length, which ``StackedLeaf`` would not split)."""
    for name, module in model.named_modules():
        if not any(True for _ in module.named_parameters(recurse=False)):
            continue
        if any(True for _ in module.children()):
            raise ValueError(f"{type(model).__name__}.{name} holds parameters outside a leaf module")
        if type(module) not in (nn.Linear, nn.Embedding) and len(inspect.signature(module.forward).parameters) != 1:
            raise ValueError(f"{type(model).__name__}.{name} takes more than the hidden states")


def _stacked_leaf(module: nn.Module, weights: dict[str, torch.Tensor], members: list[nn.Module]) -> nn.Module:
    if type(module) is nn.Linear:
        return StackedLinear(weights["weight"], weights.get("bias"))
    if type(module) is nn.Embedding:
        return StackedEmbedding(weights["weight"])
    if set(weights) == {"weight"} and weights["weight"].dim() == 2 and _scales_its_output(module):
        return StackedScale(module, weights["weight"])
    return StackedLeaf(members)


def _scales_its_output(module: nn.Module) -> bool:
    """Is ``module(x)`` exactly ``weight * module_with_unit_weight(x)`` (RMSNorm and its kin, not Gemma's)?"""
    weight = module.get_parameter("weight")
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((3, 5, weight.shape[-1]), generator=generator).to(weight)
    scale = torch.randn(weight.shape, generator=generator).to(weight)
    with torch.no_grad():
        scaled = functional_call(module, {"weight": scale}, (probe,))
        unit = functional_call(module, {"weight": torch.ones_like(weight)}, (probe,))
    return scaled.shape == probe.shape and torch.equal(scaled, scale * unit)


def _per_member(x: torch.Tensor, members: int) -> torch.Tensor:
    """(members * rows, ...) -> (members, rows * ..., last): the batch's leading rows belong to member 0."""
    return x.reshape(members, -1, x.shape[-1])


class StackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _per_member(x, self.weight.shape[0])
        if self.bias is None:
            out = torch.bmm(rows, self.weight.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), rows, self.weight.transpose(1, 2))
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


class StackedScale(nn.Module):
    """A norm whose weight only scales its output: one call with unit weight, then each member's scale."""

    def __init__(self, module: nn.Module, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        unit = copy.deepcopy(module)
        unit.weight = nn.Parameter(torch.ones_like(weight[0]), requires_grad=False)
        self.__dict__["unit"] = unit  # a constant, not a weight of the stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.unit(x)
        return (_per_member(out, self.weight.shape[0]) * self.weight.unsqueeze(1)).reshape(out.shape)


class StackedLeaf(nn.Module):
    """Any other leaf: each member's own module (its weights already views into the stack) on its rows."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.__dict__["members"] = members  # the members' modules, not submodules of the stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([module(part) for module, part in zip(self.members, x.chunk(len(self.members)), strict=True)])
