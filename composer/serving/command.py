"""``proxy-compose serve [overrides...]``: the recipe the overrides choose, served until Ctrl-C."""

from __future__ import annotations

from omegaconf import OmegaConf

from composer.config import build_composer, build_decoding, compose
from composer.serving.settings import ServeSettings
from experts.errors import UserInputError, check_whole

USAGE = """usage: proxy-compose serve [hydra overrides...]

Serve the recipe that the overrides choose (default: tiny) over the OpenAI HTTP API: POST /v1/completions and
/v1/chat/completions (stream=true too), GET /v1/models and /health. Settings under serve.: host (127.0.0.1),
port (8000), api_key (unset: no auth), model_name, max_tokens, max_prompt_tokens, max_batch, batch_wait_ms,
max_logprobs. A request's extra field objectives: {NAME: WEIGHT} steers that request alone."""


def main(overrides: list[str]) -> int:
    if {"-h", "--help"} & set(overrides):
        print(USAGE)
        return 0
    flags = [arg for arg in overrides if arg.startswith("-")]
    if flags:
        raise UserInputError(f"serve takes overrides only, not {flags[0]!r} (see proxy-compose serve --help)")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError:
        raise UserInputError("proxy-compose serve needs the serve extra: pip install 'proxy-composer[serve]'") from None
    from composer.serving.app import server

    cfg = compose(overrides)
    settings = ServeSettings(**OmegaConf.to_container(cfg.serve, resolve=True))
    check_settings(settings)
    defaults = build_decoding(cfg)
    composer = build_composer(cfg)
    print(
        f"serving {len(composer.objectives)} objective(s) {[o.name for o in composer.objectives]} as model "
        f"{settings.model_name!r} on http://{settings.host}:{settings.port}/v1",
        flush=True,
    )
    server(composer, settings, defaults).run()
    return 0


def check_settings(settings: ServeSettings) -> None:
    check_whole("serve.port", settings.port, minimum=0, maximum=65535)
    for name in ("max_tokens", "max_prompt_tokens", "max_batch"):
        check_whole(f"serve.{name}", getattr(settings, name), minimum=1)
    check_whole("serve.max_logprobs", settings.max_logprobs, minimum=0)
    if not settings.batch_wait_ms >= 0:
        raise UserInputError(f"serve.batch_wait_ms={settings.batch_wait_ms!r} must be >= 0")
    if settings.api_key is not None and not settings.api_key:
        raise UserInputError("serve.api_key is empty; give a key, or leave it unset for no auth")
