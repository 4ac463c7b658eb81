"""``proxy-compose serve``: a composition over the OpenAI HTTP API, requests batched into shared forwards."""

from __future__ import annotations

from composer.serving.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app", "server"]


def server(composer, settings: ServeSettings, defaults):  # noqa: ANN001, ANN201 (uvicorn is imported here)
    """A uvicorn server for the composition, not yet started: ``.run()`` serves until stopped."""
    import uvicorn

    config = uvicorn.Config(
        create_app(composer, settings, defaults), host=settings.host, port=settings.port, log_level="warning"
    )
    return uvicorn.Server(config)
