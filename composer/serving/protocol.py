"""The OpenAI request fields the server honours, read into decoding settings, and its response bodies.

A field the server cannot honour is refused (HTTP 400 naming it), never ignored: the client would otherwise
believe it took effect.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from composer.decoding import DecodingConfig
from composer.engine import Completion
from composer.trace import TokenLogprobs
from experts.tokens import TokenTable

COMPLETION_FIELDS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs", "stop",
    "seed", "user", "objectives", "echo", "best_of", "presence_penalty", "frequency_penalty", "logit_bias", "suffix",
}  # fmt: skip
CHAT_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "logprobs", "top_logprobs", "stop", "seed", "user", "objectives", "presence_penalty",
    "frequency_penalty", "logit_bias",
}  # fmt: skip
NEUTRAL = {"echo": False, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "suffix": None}
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A request read and checked: one prompt (text or token ids), its settings and per-objective weights."""

    chat: bool
    prompt: str | None
    prompt_ids: list[int] | None
    config: DecodingConfig
    weights: dict[str, float]
    logprobs: int | None
    stream: bool
    include_usage: bool


def read_request(body: Any, chat: bool, defaults: DecodingConfig, limits: dict[str, int]) -> Request:
    """Everything but the objectives' names and the prompt's length, which the composer checks."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - (CHAT_FIELDS if chat else COMPLETION_FIELDS))
    if unknown:
        raise RequestError(f"field {unknown[0]!r} is not supported by this server", unknown[0])
    for name, neutral in NEUTRAL.items():
        if body.get(name, neutral) not in (neutral, None):
            raise RequestError(f"{name}={body[name]!r} is not supported; leave it unset", name)
    prompt, prompt_ids = _chat_prompt(body) if chat else _completion_prompt(body)
    logprobs = _logprobs(body, chat, limits["max_logprobs"])
    max_tokens = body.get("max_completion_tokens" if "max_completion_tokens" in body else "max_tokens")
    max_tokens = defaults.max_new_tokens if max_tokens is None else max_tokens
    _whole("max_tokens", max_tokens, 1, limits["max_tokens"])
    n = 1 if body.get("n") is None else body["n"]
    _whole("n", n, 1, limits["max_batch"])
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0:
        raise RequestError("top_p must be > 0", "top_p")
    sample = defaults.do_sample if temperature is None else temperature > 0
    if n > 1 and not sample:
        raise RequestError("n > 1 needs sampling (temperature > 0): greedy choices would be identical", "n")
    seed = body.get("seed")
    if seed is not None:
        _whole("seed", seed, 0, 2**63 - 1)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop must be a non-empty string or a list of up to 4 of them", "stop")
    sampling = {}  # unset fields keep the recipe's decoding settings; greedy takes none of them
    if sample:
        temperature = defaults.temperature if temperature is None else temperature
        top_p = defaults.top_p if top_p is None else top_p
        sampling = {"temperature": temperature, "top_k": defaults.top_k, "top_p": top_p, "min_p": defaults.min_p}
    config = DecodingConfig(
        max_new_tokens=max_tokens,
        do_sample=sample,
        **sampling,
        repetition_penalty=defaults.repetition_penalty,
        stop=tuple(stops) if stop is not None else defaults.stop,
        seed=seed if seed is not None else defaults.seed,
        num_return_sequences=n,
    )
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError("stream_options takes include_usage only", "stream_options")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    return Request(
        chat, prompt, prompt_ids, config, _weights(body), logprobs, stream, bool(options.get("include_usage"))
    )


def _completion_prompt(body: dict[str, Any]) -> tuple[str | None, list[int] | None]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return prompt, None
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return None, prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise RequestError("send one prompt per request (the server batches concurrent requests)", "prompt")
    raise RequestError("prompt must be a non-empty string or a list of token ids", "prompt")


def _chat_prompt(body: dict[str, Any]) -> tuple[str, None]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError("messages must be a non-empty list of {role, content} objects", "messages")
    if len(messages) != 1 or messages[0].get("role") != "user":
        raise RequestError(
            "send one user message: the prompt format (chat template, system prompt) is each member's, set in the "
            "recipe (format: chat, system: ...)",
            "messages",
        )
    content = messages[0].get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise RequestError("message content parts must be text", "messages")
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str) or not content:
        raise RequestError("the user message's content must be non-empty text", "messages")
    return content, None


def _logprobs(body: dict[str, Any], chat: bool, most: int) -> int | None:
    if chat:
        wanted = body.get("logprobs") or False
        if not isinstance(wanted, bool):
            raise RequestError("logprobs must be true or false", "logprobs")
        top = body.get("top_logprobs")
        if top is not None and not wanted:
            raise RequestError("top_logprobs needs logprobs=true", "top_logprobs")
        if top is not None:
            _whole("top_logprobs", top, 0, most)
        return (top or 0) if wanted else None
    top = body.get("logprobs")
    if top is not None:
        _whole("logprobs", top, 0, most)
    return top


def _weights(body: dict[str, Any]) -> dict[str, float]:
    weights = body.get("objectives") or {}
    if not isinstance(weights, dict):
        raise RequestError('objectives must map objective names to weights, e.g. {"safety": 0.5}', "objectives")
    for name, weight in weights.items():
        number = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not number or not math.isfinite(weight):
            raise RequestError(f"objectives.{name} must be a finite number, not {weight!r}", f"objectives.{name}")
    return {str(name): float(weight) for name, weight in weights.items()}


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name} must be a whole number from {low} to {high}, not {value!r}", name)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"{name} must be a number from {low} to {high}, not {value!r}", name)
    return float(value)


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def logprobs_body(
    steps: list[TokenLogprobs], top: int, table: TokenTable, chat: bool, offset: int = 0
) -> dict[str, Any]:
    """The log-probs of ``steps`` in the endpoint's shape (chat: ``content``; completions: parallel lists), with
    the ``top`` most likely alternatives (a batch computes its largest request's)."""
    steps = [TokenLogprobs(s.token_id, s.logprob, s.top[:top]) for s in steps]
    if chat:
        return {
            "content": [
                {
                    **_token(table, s.token_id, s.logprob),
                    "top_logprobs": [_token(table, t, lp) for t, lp in s.top],
                }
                for s in steps
            ]
        }
    tokens = [table.string(s.token_id) for s in steps]
    offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {
        "tokens": tokens,
        "token_logprobs": [s.logprob for s in steps],
        "top_logprobs": [{table.string(t): lp for t, lp in s.top} for s in steps],
        "text_offset": offsets,
    }


def _token(table: TokenTable, token_id: int, logprob: float) -> dict[str, Any]:
    return {"token": table.string(token_id), "logprob": logprob, "bytes": list(table.bytes[token_id])}


def response_body(
    request: Request, ident: str, model: str, completions: list[Completion], prompt_tokens: int, table: TokenTable
) -> dict[str, Any]:
    choices = []
    for index, done in enumerate(completions):
        logprobs = None
        if request.logprobs is not None and done.logprobs is not None:
            logprobs = logprobs_body(done.logprobs, request.logprobs, table, request.chat)
        reason = FINISH[done.finish_reason]
        if request.chat:
            message = {"role": "assistant", "content": done.text}
            choices.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason})
        else:
            choices.append({"index": index, "text": done.text, "logprobs": logprobs, "finish_reason": reason})
    return {
        "id": ident,
        "object": "chat.completion" if request.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, sum(len(c.token_ids) for c in completions)),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
