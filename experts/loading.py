"""Loading causal LMs and their tokenizers once per unique weight spec."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.cache_utils import LinearAttentionCacheLayerMixin

from experts.api import ApiModel, ApiSpec, load_api
from experts.errors import UserInputError, check_whole, first_line

_DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_MAP_STRATEGIES = {"auto", "balanced", "balanced_low_0", "sequential"}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights come from and how to place them; equal specs share one loaded copy."""

    path: str
    dtype: str = "float32"
    device: str | int | torch.device | None = None  # held as torch spells it: 'cpu', 'cuda:0'
    # transformers' forms; a per-module mapping is held as sorted (module, device) pairs, so that specs hash
    device_map: str | int | torch.device | Mapping[str, int | str] | tuple[tuple[str, int | str], ...] | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    top_logprobs: int | None = None  # cut the model's scores to its top-k log-probs, as an endpoint gives them

    def __post_init__(self) -> None:
        if self.top_logprobs is not None:
            check_whole(f"model {self.path!r}: top_logprobs", self.top_logprobs, minimum=1)
        if not self.path or not isinstance(self.path, str):
            raise UserInputError(
                "model path is empty: give a local folder or a hub id such as 'meta-llama/Llama-2-7b-hf'"
            )
        if isinstance(self.device_map, Mapping):
            object.__setattr__(self, "device_map", tuple(sorted(self.device_map.items(), key=lambda p: str(p[0]))))
        if isinstance(self.device_map, tuple):
            _check_module_map(self.path, self.device_map)
            object.__setattr__(self, "device_map", tuple((m, _canonical(w)) for m, w in self.device_map))
        elif self.device_map is not None and not isinstance(self.device_map, str | int | torch.device):
            raise UserInputError(
                f"model {self.path!r}: device_map must be a strategy (auto), a device, or a mapping of module "
                f"names to devices, not {type(self.device_map).__name__}"
            )
        if self.dtype not in _DTYPES:
            raise UserInputError(f"model {self.path!r}: dtype {self.dtype!r} is unknown; use one of {sorted(_DTYPES)}")
        if self.device is not None and self.device_map is not None:
            raise UserInputError(f"model {self.path!r}: set either device or device_map, not both")
        where = self.placement
        if where is not None and (where == "disk" or not _is_device(where)):
            raise UserInputError(
                f"model {self.path!r}: {where!r} is not a device; use cpu, cuda, cuda:1 or mps"
                + (" (device_map: or auto, balanced, sequential)" if self.device_map is not None else "")
            )
        # one device, however it is spelt (0 or 'cuda:0', 'cpu' or torch.device('cpu')), is one spec: one load
        if self.device is not None:
            object.__setattr__(self, "device", _canonical(self.device))
        elif self.device_map not in (None, *_MAP_STRATEGIES) and not isinstance(self.device_map, tuple):
            object.__setattr__(self, "device_map", _canonical(self.device_map))

    @property
    def placement(self) -> str | int | None:
        """The one device the model is asked to go to, if any (a device map's strategy is not one)."""
        if isinstance(self.device_map, str | int | torch.device) and self.device_map not in _MAP_STRATEGIES:
            return self.device_map
        return self.device

    @property
    def devices(self) -> set[str | int]:
        """Every device the spec names: its placement, or each of its module map's (not "disk")."""
        if isinstance(self.device_map, tuple):
            return {where for _, where in self.device_map if where != "disk"}
        return set() if self.placement is None else {self.placement}

    @property
    def name(self) -> str:
        return self.path.rstrip("/").split("/")[-1] or self.path


def _check_module_map(path: str, pairs: tuple[tuple[str, int | str], ...]) -> None:
    """Each module of a per-module map goes to a device index, a device, or "disk" (transformers' offload)."""
    if not pairs:
        raise UserInputError(f"model {path!r}: device_map is an empty mapping; map '' to a device, or use auto")
    if not all(isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) for pair in pairs):
        raise UserInputError(f"model {path!r}: device_map must map module names to devices, e.g. {{'': 'cpu'}}")
    for module, where in pairs:
        if not _is_device(where):
            raise UserInputError(
                f"model {path!r}: device_map[{module!r}]={where!r} is not a device; use cpu, cuda:0, 0, disk or mps"
            )


def _is_device(where: object) -> bool:
    if isinstance(where, bool):
        return False
    if isinstance(where, int):
        return where >= 0
    return where == "disk" or _torch_device(where)


def _torch_device(where: object) -> bool:
    """Does torch read ``where`` as a device ('cpu', 'cuda:1', 'mps')?"""
    try:
        torch.device(where)
    except (RuntimeError, TypeError):
        return False
    return True


def _canonical(where: int | str) -> int | str:
    """A device as torch spells it, with its index: an index, as transformers reads it, names the accelerator
    of that index where the machine has one (and stays an index where it has none), and the accelerator without
    an index ('cuda') names the current one, so that 'cuda' and 'cuda:0' load one copy, not two."""
    if where == "disk":
        return where
    accelerator = torch.accelerator.current_accelerator()
    if isinstance(where, int):
        return where if accelerator is None else f"{accelerator.type}:{where}"
    device = torch.device(where)
    if device.index is None and accelerator is not None and device.type == accelerator.type:
        return f"{device.type}:{torch.accelerator.current_device_index()}"
    return str(device)


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def vocab_width(self) -> int:
        """Width of the logits the model emits (may exceed the tokenizer's length when padded)."""
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def context_window(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


_IN_MEMORY: dict[str, LoadedModel] = {}
IN_MEMORY_PREFIX = "memory:"


def register(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> ModelSpec:
    """A spec for a model already in memory (built from a config, fine-tuned in a notebook), so that it
    composes without a round trip through the disk; its dtype and device are the model's own."""
    if not isinstance(model, PreTrainedModel) or not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise UserInputError(
            f"register({name!r}, model, tokenizer) takes a transformers causal LM and its tokenizer, not "
            f"{type(model).__name__} and {type(tokenizer).__name__}"
        )
    _check_attention_cache(IN_MEMORY_PREFIX + name, model)
    dtype = next(model.parameters()).dtype
    names = {value: key for key, value in _DTYPES.items()}
    spec = ModelSpec(IN_MEMORY_PREFIX + name, dtype=names.get(dtype, "auto"))
    held = _IN_MEMORY.get(spec.path)
    if held is not None and held.model is not model:
        raise UserInputError(f"a model is already registered as {name!r}; register this one under another name")
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    _IN_MEMORY[spec.path] = LoadedModel(spec=spec, model=model, tokenizer=tokenizer)
    return spec


def _check_attention_cache(path: str, model: PreTrainedModel) -> None:
    """Every stream keeps an attention KV cache, which it masks, crops and reorders by columns; a model whose
    cache holds a recurrent state (Mamba, linear attention) cannot be, and ran each step without its past."""
    layers = DynamicCache(config=model.config).layers
    if any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in layers):
        raise UserInputError(
            f"model {path!r} ({type(model).__name__}) keeps a recurrent state, not only an attention KV cache; "
            "state-space and linear-attention models such as Mamba are not supported"
        )


def load(spec: ModelSpec | ApiSpec) -> LoadedModel | ApiModel:
    """Load (or reuse) the model and tokenizer for ``spec``; each unique spec is read from disk once (an
    endpoint's spec gets its client and local tokenizer)."""
    if isinstance(spec, ApiSpec):
        return load_api(spec)
    if spec.path.startswith(IN_MEMORY_PREFIX):
        if spec.path not in _IN_MEMORY:
            raise UserInputError(f"model {spec.path!r} was never registered; call experts.loading.register first")
        return _IN_MEMORY[spec.path]
    return _load_cached(spec)


def check_folder(spec: ModelSpec | ApiSpec) -> None:
    """A path that names a folder (not a hub id such as 'org/name') must exist: an endpoint's tokenizer too."""
    path = spec.tokenizer if isinstance(spec, ApiSpec) else spec.path
    looks_like_path = path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_like_path and not os.path.isdir(os.path.expanduser(path)):
        what = f"api model {spec.model!r}: tokenizer" if isinstance(spec, ApiSpec) else "model"
        raise UserInputError(f"{what} {path!r} not found: no such folder; give an existing folder or a hub id")


def _check_available(spec: ModelSpec) -> None:
    """A device that this machine lacks is the user's to change, not a traceback from deep in torch."""
    for where in spec.devices:
        if isinstance(where, int):  # still an index: this machine has no accelerator
            raise UserInputError(
                f"model {spec.path!r}: device {where!r} names an accelerator and this machine has none; use cpu"
            )
        if not device_available(where):
            kind = torch.device(where).type
            raise UserInputError(
                f"model {spec.path!r}: device {where!r} is not on this machine ({_device_count(kind)} {kind} "
                "device(s)); use another, or cpu"
            )


def device_available(where: str) -> bool:
    """Is ``where`` a device that this machine has ('cpu' always; 'cuda:1' with two GPUs)?"""
    if not _torch_device(where):
        return False
    device = torch.device(where)
    count = _device_count(device.type)
    return count is None or (device.index or 0) < count


def _device_count(kind: str) -> int | None:
    """Devices of this kind here (torch.cuda, torch.xpu, ...), None where torch cannot tell (cpu, plug-ins)."""
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    counter = getattr(getattr(torch, kind, None), "device_count", None)
    return None if kind == "cpu" or counter is None else counter()


@cache
def _load_cached(spec: ModelSpec) -> LoadedModel:
    _check_available(spec)
    check_folder(spec)
    kwargs: dict = {"trust_remote_code": spec.trust_remote_code, "revision": spec.revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
        device_map = dict(spec.device_map) if isinstance(spec.device_map, tuple) else spec.device_map
        model = AutoModelForCausalLM.from_pretrained(
            spec.path, dtype=_DTYPES[spec.dtype], device_map=device_map, **kwargs
        )
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"model {spec.path!r} could not be loaded ({first_line(err)}); check the path or hub id, "
            "and set trust_remote_code only if you trust it"
        ) from err
    _check_attention_cache(spec.path, model)
    if spec.device is not None:
        model = model.to(spec.device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer)
