"""Config schemas and their conversion to library objects: the only place where omegaconf meets the engine.

The dataclasses below are registered in Hydra's ConfigStore, so a misspelt key or a wrong type fails when the
config is composed, naming the key. ``_target_`` nodes (schedules, metrics) are instantiated only from the
project's schedule and metric modules or from modules the config lists in ``allow_targets``: a recipe cannot
call arbitrary code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from composer.decoding import DecodingConfig
from composer.engine import Composer
from composer.metrics import Metric
from composer.objectives import Member, Objective
from composer.plan import Plan
from composer.serving.settings import ServeSettings
from composer.speculative import GAMMA_SCHEDULES, Draft
from experts import family
from experts.api import ApiSpec
from experts.errors import UserInputError, check_whole, first_line
from experts.loading import ModelSpec
from experts.prompts import Chat, PromptFormat, Raw, Template

CONF_DIR = Path(__file__).parent / "_conf"  # a link to the repo's conf/ (a copy in the wheel)

# The project's modules meant to be built from a config. Not all of composer.* and experts.*: those include
# functions with side effects (experts.family.train.main retrains the family; the sandbox runs code).
PROJECT_MODULES = ("composer.schedules", "composer.metrics")
FORMATS = ("raw", "chat", "template")
SIDES = ("expert", "anti")


@dataclass
class ApiConfig:
    """A black-box model behind an OpenAI-compatible /v1/completions endpoint (``experts.api.ApiSpec``)."""

    base_url: str = MISSING  # e.g. http://127.0.0.1:8000/v1
    model: str = MISSING
    top_logprobs: int = 5
    api_key_env: str | None = None  # the environment variable holding the key; the key itself is never in a config
    tries: int = 4
    timeout: float = 30.0
    prompt_as: str = "text"  # or ids
    concurrency: int = 16
    context_window: int | None = None


@dataclass
class ModelConfig:
    path: str = MISSING  # a local folder or hub id; an endpoint's model sets api (and tokenizer) instead
    api: ApiConfig | None = None
    tokenizer: str | None = None  # api only: the local tokenizer that maps the endpoint's tokens to ids
    top_logprobs: int | None = None  # a local model cut to its top-k log-probs, as an endpoint gives them
    dtype: str = "float32"
    device: Any = None  # a device (cpu, cuda:1) or an accelerator index (0), as transformers reads it
    device_map: Any = None  # a strategy (auto), a device, or {module: device} (transformers' forms)
    trust_remote_code: bool = False
    revision: str | None = None
    format: str = "raw"  # raw | chat | template
    system: str | None = None  # chat only: an optional system prompt
    template: str | None = None  # template only: a string with a {prompt} field


@dataclass
class ObjectiveConfig:
    expert: ModelConfig = MISSING
    anti: ModelConfig = MISSING
    weight: float = 1.0
    schedule: Any = field(default_factory=lambda: {"_target_": "composer.schedules.Constant"})
    metric: Any = None  # a _target_ node building a composer.metrics.Metric, or null
    bounds: list[float | None] | None = None  # [low, high] allowed for weight * schedule(t); null = open
    protected: bool = False  # refuse a negative effective weight unless named in override_guards


@dataclass
class DecodingSchema:
    """Mirrors composer.decoding.DecodingConfig, whose constructor checks the values."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    num_return_sequences: int = 1


@dataclass
class SpeculativeConfig:
    gamma: int = 0  # tokens drafted per round; 0 decodes without speculation
    gamma_schedule: str = "constant"  # or "heuristic": gamma adapts to acceptance (transformers' schedules)
    draft: str | None = None  # null: the shared anti-expert, steered by the objectives; an objective: its expert


@dataclass
class RunConfig:
    base: ModelConfig = MISSING
    objectives: dict[str, ObjectiveConfig] = field(default_factory=dict)
    decoding: DecodingSchema = field(default_factory=DecodingSchema)
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None  # .txt (one prompt a line) or .jsonl ({"id", "prompt", "weights"?})
    output: str | None = None  # default: completions.jsonl in the Hydra run dir
    resume: bool = False
    batch_size: int = 8  # records are written as each batch finishes
    trace: bool = False
    allow_targets: list[str] = field(default_factory=list)
    override_guards: list[str] = field(default_factory=list)  # objectives whose bounds/protection may be broken
    cuda_graphs: bool = False  # replay decoding steps as CUDA graphs (Composer(cuda_graphs=True))
    compile: bool = False  # run the decoding steps after the prefill through torch.compile (Composer(compile=True))
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    serve: ServeSettings = field(default_factory=ServeSettings)  # proxy-compose serve


def register_configs() -> None:
    """The schema as the ``run_schema`` config that conf/config.yaml extends, and the ``family`` resolver."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("family"):
        OmegaConf.register_new_resolver("family", family_model_path)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The run config that ``proxy-compose OVERRIDES`` would run, for Python callers (the lm-eval adapter, the
    evaluation). A caller's own Hydra (a @hydra.main script, a notebook's compose API) is put back after."""
    register_configs()
    outer = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra.compose("config", overrides=list(overrides))
    finally:
        restore_gh_from_backup(outer)


def family_model_path(name: str) -> str:
    """``${family:tiny-base}``: the folder of one of the project's tiny family models, in the repo or the wheel."""
    return str(Path(family.MODELS_DIR) / name)


def schema_default(key: str) -> Any:
    """The schema's default for a dotted key ('decoding.top_k', 'objectives.NAME.expert.dtype'), or
    ``NO_DEFAULT``. A resume tells by it a setting that a newer schema added from one that was changed."""
    node: Any = RunConfig
    parts = key.split(".")
    while parts and is_dataclass(node):
        found = {f.name: f for f in fields(node)}.get(parts.pop(0))
        if found is None:
            break
        if not parts:
            return found.default if found.default_factory is NO_DEFAULT else found.default_factory()
        kind = get_type_hints(node)[found.name]
        if get_origin(kind) is dict:  # objectives: a name, then an ObjectiveConfig
            kind = get_args(kind)[1]
            parts.pop(0)
        node = kind
    return NO_DEFAULT


def check_keys(cfg: DictConfig) -> None:
    """Keys added with '+' (Hydra's own hint for a misspelt key) are past the schema's checks: a misspelt
    '+objectives.math.wieght=2' would change nothing, silently."""
    _check_node("the config", cfg, RunConfig)
    _check_node("speculative", cfg.speculative, SpeculativeConfig)
    for name, node in cfg.objectives.items():
        _check_node(f"objectives.{name}", node, ObjectiveConfig)
    for key, node in model_nodes(cfg):
        _check_node(key, node, ModelConfig)


def model_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The config's models by key: base, then each objective's expert and anti (those that are nodes at all:
    a missing one is named when the config is built)."""
    nodes = [("base", cfg.base)]
    nodes += [(f"objectives.{name}.{side}", node.get(side)) for name, node in cfg.objectives.items() for side in SIDES]
    return [(key, node) for key, node in nodes if isinstance(node, DictConfig)]


def _check_node(key: str, node: Any, schema: type) -> None:
    if not isinstance(node, DictConfig):
        return  # a missing or mistyped node: building it names the problem
    known = sorted(f.name for f in fields(schema))
    unknown = sorted(set(node.keys()) - set(known))
    if unknown:
        raise UserInputError(f"{key} has unknown key(s) {unknown}; known keys are {known}")


def build_base(cfg: DictConfig) -> Member:
    return build_member("base", cfg.base)


def build_objectives(cfg: DictConfig) -> list[Objective]:
    """Objective objects from the config, without loading any weights."""
    allow = list(cfg.get("allow_targets") or [])
    return [
        Objective(
            name=str(name),
            expert=build_member(f"objectives.{name}.expert", node.expert),
            anti=build_member(f"objectives.{name}.anti", node.anti),
            weight=node.weight,
            schedule=instantiate_allowed(f"objectives.{name}.schedule", node.schedule, allow),
            bounds=None if node.bounds is None else tuple(node.bounds),
            protected=node.protected,
        )
        for name, node in cfg.objectives.items()
    ]


def build_metrics(cfg: DictConfig) -> dict[str, Metric]:
    """One metric per objective that declares one."""
    allow = list(cfg.get("allow_targets") or [])
    return {
        str(name): instantiate_allowed(f"objectives.{name}.metric", node.metric, allow)
        for name, node in cfg.objectives.items()
        if node.metric is not None
    }


def build_decoding(cfg: DictConfig) -> DecodingConfig:
    values = OmegaConf.to_container(cfg.decoding, resolve=True)
    known = {f.name for f in fields(DecodingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:  # '+decoding.key=...' adds keys past the schema
        raise UserInputError(f"decoding has unknown key(s) {unknown}; known keys are {sorted(known)}")
    return DecodingConfig(**values)


def build_draft(cfg: DictConfig) -> Draft | None:
    """The speculative draft the run asks for (``speculative.gamma`` > 0), or None."""
    node = cfg.speculative
    check_whole("speculative.gamma", node.gamma, minimum=0, hint=" (0: no speculation)")
    if node.gamma_schedule not in GAMMA_SCHEDULES:
        raise UserInputError(f"speculative.gamma_schedule={node.gamma_schedule!r}: use one of {GAMMA_SCHEDULES}")
    if node.gamma == 0:
        return None
    if node.draft is not None and node.draft not in cfg.objectives:
        raise UserInputError(
            f"speculative.draft={node.draft!r} is not an objective; name one of {sorted(cfg.objectives)} "
            "(its expert drafts alone) or leave it null (the shared anti-expert drafts, steered)"
        )
    alone = None  # the shared anti-expert drafts, steered by the objectives
    if node.draft is not None:
        alone = build_member(f"objectives.{node.draft}.expert", cfg.objectives[node.draft].expert)
    draft = Draft(model=alone, steer=alone is None, gamma=node.gamma, gamma_schedule=node.gamma_schedule)
    draft.slot(Plan(build_base(cfg), build_objectives(cfg)))  # refused here, before any weights load
    return draft


def build_composer(cfg: DictConfig) -> Composer:
    """The Composer for a composed config: the one step that loads weights."""
    check_keys(cfg)
    return Composer(
        build_base(cfg),
        build_objectives(cfg),
        override_guards=list(cfg.override_guards),
        cuda_graphs=cfg.cuda_graphs,
        compile=cfg.compile,
    )


def build_member(key: str, node: DictConfig) -> Member:
    if node.get("api") is not None:
        return Member(build_api(key, node), build_format(key, node))
    if node.get("tokenizer") is not None:
        raise UserInputError(f"{key}.tokenizer is for an api model; a local model uses its own folder's tokenizer")
    spec = ModelSpec(
        path=node.path,
        dtype=node.dtype,
        device=node.device,
        device_map=OmegaConf.to_container(node.device_map) if OmegaConf.is_config(node.device_map) else node.device_map,
        trust_remote_code=node.trust_remote_code,
        revision=node.revision,
        top_logprobs=node.get("top_logprobs"),
    )
    return Member(spec, build_format(key, node))


def build_api(key: str, node: DictConfig) -> ApiSpec:
    """An endpoint's model: ``api`` says where and how to ask it, ``tokenizer`` maps its tokens to ids."""
    if not OmegaConf.is_missing(node, "path"):
        raise UserInputError(f"{key}: set either path (a local model) or api (an endpoint), not both")
    if node.get("top_logprobs") is not None:
        raise UserInputError(f"{key}: an api model's top-k is api.top_logprobs; drop {key}.top_logprobs")
    if node.get("tokenizer") is None:
        raise UserInputError(
            f"{key}.tokenizer is unset: an api model needs the local tokenizer (a folder or hub id) that maps the "
            "endpoint's tokens to the experts' ids"
        )
    values = OmegaConf.to_container(node.api, resolve=True)
    missing = [name for name in ("base_url", "model") if values.get(name) in (None, "???")]
    if missing:
        raise UserInputError(f"{key}.api.{missing[0]} is unset; give the endpoint's {missing[0]}")
    return ApiSpec(tokenizer=str(node.tokenizer), **values)


def build_format(key: str, node: DictConfig) -> PromptFormat:
    if node.format not in FORMATS:
        raise UserInputError(f"{key}.format={node.format!r} is unknown; use one of {list(FORMATS)}")
    if node.system is not None and node.format != "chat":
        raise UserInputError(f"{key}.system is set but format is {node.format!r}; a system prompt needs format=chat")
    if (node.template is not None) != (node.format == "template"):
        raise UserInputError(
            f"{key}: format=template and a template string go together; set both or neither "
            f"({key}.template=null to drop the template)"
        )
    if node.format == "chat":
        return Chat(system=node.system)
    if node.format == "template":
        return Template(node.template)
    return Raw()


def instantiate_allowed(key: str, node: Any, allow: list[str]) -> Any:
    """Instantiate ``node`` after checking every ``_target_`` in it against the project's modules and ``allow``."""
    if not isinstance(node, DictConfig | dict) or "_target_" not in node:
        preset = f"; to pick a preset write schedules@{key}=NAME" if key.endswith(".schedule") else ""
        raise UserInputError(f"{key} must be a node with a _target_, not {node!r}{preset}")
    for target in _targets(node):
        if not _allowed(target, allow):
            raise UserInputError(
                f"{key}: _target_ {target!r} is not allowed; use composer.schedules.* or composer.metrics.*, "
                "or list its module in allow_targets"
            )
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, UserInputError):  # named by the key it came from ("linear schedule: ...")
            raise UserInputError(f"{key}: {err.__cause__}") from None
        cause = err.__cause__ or err
        raise UserInputError(f"{key}: {first_line(cause)}{_swap_hint(key, cause)}") from None


def _swap_hint(key: str, cause: BaseException) -> str:
    """Setting another class over a recipe's node merges in the old class's keys, which the new one refuses."""
    stray = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
    if not isinstance(cause, TypeError) or stray is None:
        return ""
    hint = f"; {stray[1]!r} may be left from the class this one replaces: drop it with ~{key}.{stray[1]}"
    if key.endswith(".schedule"):
        hint += f", or pick a preset (schedules@{key}=NAME; in a recipe's defaults: override /schedules@{key}: NAME)"
    return hint


def _targets(node: Any) -> list[str]:
    if isinstance(node, DictConfig | dict):
        found = [str(node["_target_"])] if "_target_" in node else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, ListConfig | list):
        return [t for value in node for t in _targets(value)]
    return []


def _allowed(target: str, allow: list[str]) -> bool:
    return any(target == prefix or target.startswith(prefix + ".") for prefix in (*PROJECT_MODULES, *allow))
