"""A real ``proxy-compose serve`` server (uvicorn) on a free port of this machine, in a thread of the test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import openai

from composer.decoding import DecodingConfig
from composer.engine import Composer
from composer.serving.app import server
from composer.serving.settings import ServeSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    composer: Composer, defaults: DecodingConfig | None = None, before: Callable | None = None, **settings: object
) -> Iterator[tuple[str, object]]:
    """(base_url, the uvicorn server) while the server runs; ``before(app)`` may add middleware first."""
    chosen = replace(ServeSettings(port=free_port()), **settings)
    running = server(composer, chosen, defaults or DecodingConfig())
    if before is not None:
        before(running.config.app)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{chosen.port}/v1", running
    finally:
        running.should_exit = True
        thread.join(10)


def client(base_url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
