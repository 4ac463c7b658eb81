"""``serve.*``: the server's settings, the run config's schema for them too (no web stack imported here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # unset: no auth; set: every /v1 request needs "Authorization: Bearer KEY"
    model_name: str = "proxy-composer"
    max_tokens: int = 256
    max_prompt_tokens: int = 2048
    max_batch: int = 16  # rows decoded at once
    batch_wait_ms: float = 5.0  # how long the first request of an empty batch waits for others to join
    max_logprobs: int = 20
