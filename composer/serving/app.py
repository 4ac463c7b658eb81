"""A composition behind the OpenAI HTTP API (FastAPI on uvicorn): completions, chat completions, both streamed
as server-sent events too, the model list and a health check.

Handlers run on the event loop and only read requests and write responses; the batcher's thread decodes. A
request is checked whole (fields, objectives, guards, context windows) before it joins a batch, so that
nothing a client sends fails another client's batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from composer.decoding import DecodingConfig
from composer.engine import Completion, Composer
from composer.serving.batcher import Batcher, Job
from composer.serving.protocol import (
    FINISH,
    Request,
    RequestError,
    logprobs_body,
    new_id,
    read_request,
    response_body,
    usage,
)
from composer.serving.settings import ServeSettings
from composer.trace import TokenLogprobs
from experts.errors import UserInputError
from experts.prompts import Raw
from experts.tokens import TokenTable

DISCONNECT_POLL_S = 0.25


def server(composer: Composer, settings: ServeSettings, defaults: DecodingConfig) -> uvicorn.Server:
    """A uvicorn server for the composition, not yet started: ``.run()`` serves until stopped."""
    config = uvicorn.Config(
        create_app(composer, settings, defaults), host=settings.host, port=settings.port, log_level="warning"
    )
    return uvicorn.Server(config)


def create_app(composer: Composer, settings: ServeSettings, defaults: DecodingConfig) -> FastAPI:
    app = FastAPI(title="proxy-composer", docs_url=None, redoc_url=None)
    batcher = Batcher(composer, settings.max_batch, settings.batch_wait_ms / 1000)
    table = TokenTable(composer.tokenizer)
    limits = {"max_tokens": settings.max_tokens, "max_batch": settings.max_batch, "max_logprobs": settings.max_logprobs}
    app.state.batcher = batcher

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # rows / steps: how many rows a decoding step advanced on average (the batching at work)
        counts = {"requests": batcher.requests, "steps": batcher.steps, "rows": batcher.rows}
        return {"status": "ok", **counts, "cancelled": batcher.cancelled}

    @app.get("/v1/models")
    async def models(http: HttpRequest) -> Response:
        refused = _unauthorised(http, settings)
        if refused is not None:
            return refused
        card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "proxy-composer"}
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/completions")
    async def completions(http: HttpRequest) -> Response:
        return await handle(http, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest) -> Response:
        return await handle(http, chat=True)

    async def handle(http: HttpRequest, chat: bool) -> Response:
        refused = _unauthorised(http, settings)
        if refused is not None:
            return refused
        try:
            body = await _json(http)
            request = read_request(body, chat, defaults, limits)
            if body.get("model") not in (None, settings.model_name):
                raise RequestError(
                    f"model {body['model']!r} is not served here; use {settings.model_name!r}",
                    "model",
                    404,
                    "model_not_found",
                )
            prompt, prompt_ids = checked_prompt(request)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def on_token(choice: int, tokens: list[int], reason: str, logprobs: TokenLogprobs | None) -> None:
            if request.stream:
                loop.call_soon_threadsafe(events.put_nowait, ("token", choice, list(tokens), reason, logprobs))

        def on_done(result: list[Completion] | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("done", result))

        job = Job(prompt, prompt_ids, request.config, request.weights, request.logprobs, on_token, on_done)
        batcher.submit(job)
        ident = new_id(chat)
        if request.stream:
            chunks = _stream(composer, request, job, events, ident, settings.model_name, len(prompt_ids), table)
            return StreamingResponse(chunks, media_type="text/event-stream")
        result = await _wait(http, job, events)
        if result is None:
            return Response(status_code=499)  # the client went away; its rows left the batch
        if isinstance(result, BaseException):
            err = _as_request_error(result)
            return JSONResponse(err.body(), status_code=err.status)
        body = response_body(request, ident, settings.model_name, result, len(prompt_ids), table)
        return JSONResponse(body)

    def checked_prompt(request: Request) -> tuple[str, list[int]]:
        """The prompt as text and as the base's raw ids, checked by the composer as ``generate`` would."""
        field = "messages" if request.chat else "prompt"
        if request.prompt_ids is not None:
            ids = request.prompt_ids
            if not all(0 <= i < composer.vocab_width for i in ids):
                raise RequestError(f"prompt token ids must lie in [0, {composer.vocab_width})", field)
            text = composer.tokenizer.decode(ids, skip_special_tokens=True) or composer.tokenizer.decode(ids)
        else:
            text, ids = request.prompt, Raw().render(request.prompt, composer.tokenizer)
        if len(ids) > settings.max_prompt_tokens:
            raise RequestError(
                f"the prompt is {len(ids)} tokens; this server takes at most {settings.max_prompt_tokens}", field
            )
        try:
            composer.check([text], [request.weights], request.config.max_new_tokens, [ids])
        except UserInputError as err:
            named = any(word in str(err) for word in ("objective", "weight", "guard", "protected", "bounds"))
            raise RequestError(str(err), "objectives" if named else field) from None
        return text, ids

    return app


def _unauthorised(http: HttpRequest, settings: ServeSettings) -> Response | None:
    if settings.api_key is None or http.headers.get("authorization") == f"Bearer {settings.api_key}":
        return None
    err = RequestError("invalid or missing API key: send Authorization: Bearer KEY", None, 401, "invalid_api_key")
    return JSONResponse(err.body(), status_code=401)


async def _json(http: HttpRequest) -> Any:
    try:
        return await http.json()
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON") from None


def _as_request_error(err: BaseException) -> RequestError:
    if isinstance(err, RequestError):
        return err
    if isinstance(err, UserInputError):
        return RequestError(str(err), status=400)
    return RequestError(f"decoding failed: {type(err).__name__}: {err}", status=500)


async def _wait(http: HttpRequest, job: Job, events: asyncio.Queue) -> list[Completion] | BaseException | None:
    """The job's result; None if the client disconnected first (its rows are then dropped)."""
    while True:
        try:
            _, result = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            return result
        except TimeoutError:
            if await http.is_disconnected():
                job.cancelled.set()
                return None


async def _stream(
    composer: Composer,
    request: Request,
    job: Job,
    events: asyncio.Queue,
    ident: str,
    model: str,
    prompt_tokens: int,
    table: TokenTable,
) -> AsyncIterator[str]:
    """Server-sent events: a chunk per generated token with the text it settles (``Composer.ready_text``)."""
    created = int(time.time())
    n = request.config.num_return_sequences
    shown, offsets = [""] * n, [0] * n

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        kind = "chat.completion.chunk" if request.chat else "text_completion"
        body = {"id": ident, "object": kind, "created": created, "model": model, "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    try:
        if request.chat:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)])
        while True:
            kind, *rest = await events.get()
            if kind == "done":
                result = rest[0]
                if isinstance(result, BaseException):
                    yield f"data: {json.dumps(_as_request_error(result).body())}\n\n"
                elif request.include_usage:
                    tokens = sum(len(c.token_ids) for c in result)
                    yield chunk([], usage=usage(prompt_tokens, tokens))
                yield "data: [DONE]\n\n"
                return
            choice, tokens, reason, logprobs = rest
            text = composer.ready_text(tokens, reason, request.config)
            delta, shown[choice] = text[len(shown[choice]) :], text
            ended = reason != "length" or len(tokens) == request.config.max_new_tokens
            part: dict[str, Any] = {"index": choice, "finish_reason": FINISH[reason] if ended else None}
            part["logprobs"] = None
            if request.logprobs is not None and logprobs is not None:
                part["logprobs"] = logprobs_body([logprobs], request.logprobs, table, request.chat, offsets[choice])
            offsets[choice] += len(delta)
            part |= {"delta": {"content": delta}} if request.chat else {"text": delta}
            yield chunk([part])
    finally:  # the client went away (or the stream ended): its rows leave the batch
        job.cancelled.set()
