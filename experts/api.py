"""A black-box base: a model reached over an OpenAI-compatible completions endpoint that returns top-k log-probs.

Each step asks the endpoint for one token with ``top_logprobs`` alternatives, as proxy-tuning does with GPT-3.5:
the base's scores are those log-probs on that support and -inf elsewhere, so the composition chooses among the
base's top-k. The endpoint's token strings map to the local tokenizer's ids (``experts.tokens``).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from threading import Lock

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from experts.errors import UserInputError, check_whole, first_line
from experts.tokens import TokenTable

PROMPT_AS = ("text", "ids")


@dataclass(frozen=True)
class ApiSpec:
    """An endpoint's model and how to ask it; equal specs share one client. The key is read from the
    environment variable ``api_key_env`` when the model loads, and is never held in the spec or a config."""

    base_url: str
    model: str
    tokenizer: str  # a local folder or hub id: the composition's ids, to which the endpoint's tokens map
    top_logprobs: int = 5  # OpenAI's legacy completions give at most 5
    api_key_env: str | None = None
    tries: int = 4  # 429, 5xx, timeouts and lost connections are tried again, with backoff, up to this many times
    timeout: float = 30.0  # seconds per request
    prompt_as: str = "text"  # or "ids": token ids as the prompt (exact where the endpoint shares the tokenizer)
    concurrency: int = 16  # requests in flight at once (one per row and position)
    context_window: int | None = None

    def __post_init__(self) -> None:
        for key in ("base_url", "model", "tokenizer"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise UserInputError(f"api model: {key} is empty; give the endpoint's {key}")
        check_whole(f"api model {self.model!r}: top_logprobs", self.top_logprobs, minimum=1)
        check_whole(f"api model {self.model!r}: tries", self.tries, minimum=1)
        check_whole(f"api model {self.model!r}: concurrency", self.concurrency, minimum=1)
        if self.context_window is not None:
            check_whole(f"api model {self.model!r}: context_window", self.context_window, minimum=1)
        if not isinstance(self.timeout, int | float) or not self.timeout > 0:
            raise UserInputError(f"api model {self.model!r}: timeout={self.timeout!r} must be a number of seconds > 0")
        if self.prompt_as not in PROMPT_AS:
            raise UserInputError(f"api model {self.model!r}: prompt_as={self.prompt_as!r}; use one of {PROMPT_AS}")
        if self.api_key_env is not None and not self.api_key_env:
            raise UserInputError(f"api model {self.model!r}: api_key_env is empty; name a variable, or leave it unset")

    @property
    def path(self) -> str:
        return f"{self.base_url.rstrip('/')}#{self.model}"

    @property
    def name(self) -> str:
        return self.model

    dtype = "float64"  # log-probs as the endpoint sends them
    device = None
    device_map = None
    devices = frozenset()
    placement = None
    trust_remote_code = False


@dataclass
class Usage:
    """What the endpoint was asked, over the model's life: the runner reports it per generated token."""

    calls: int = 0
    prompt_tokens: int = 0
    lock: Lock = field(default_factory=Lock, repr=False)

    def add(self, prompt_tokens: int) -> None:
        with self.lock:
            self.calls += 1
            self.prompt_tokens += prompt_tokens


@dataclass(frozen=True, eq=False)
class ApiModel:
    """A ``LoadedModel`` for an endpoint: the tokenizer is local, the weights are behind the endpoint."""

    spec: ApiSpec
    tokenizer: PreTrainedTokenizerBase
    client: object = field(repr=False)
    table: TokenTable = field(repr=False)
    usage: Usage = field(default_factory=Usage)
    pool: ThreadPoolExecutor = field(init=False, repr=False)  # the requests of a step, side by side
    model = None
    device = torch.device("cpu")

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", ThreadPoolExecutor(max_workers=self.spec.concurrency))

    @property
    def vocab_width(self) -> int:
        return len(self.tokenizer)

    @property
    def context_window(self) -> int | None:
        return self.spec.context_window

    def next_token_logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """One request per row, side by side: the base's log-probs after each row, (R, V), -inf off the top-k."""
        tops = list(self.pool.map(self._ask, rows))
        out = torch.full((len(rows), self.vocab_width), -math.inf, dtype=torch.float64)
        for r, top in enumerate(tops):
            for token_id, logprob in top.items():
                out[r, token_id] = logprob
        return out

    def _ask(self, row: list[int]) -> dict[int, float]:
        import openai

        spec = self.spec
        prompt: str | list[int] = row
        if spec.prompt_as == "text":
            prompt = self.tokenizer.decode(row, skip_special_tokens=True)
        try:
            response = self.client.completions.create(
                model=spec.model, prompt=prompt, max_tokens=1, temperature=0.0, logprobs=spec.top_logprobs
            )
        except openai.APIError as err:
            tries = f" after {spec.tries} {'try' if spec.tries == 1 else 'tries'}" if _retried(err) else ""
            raise UserInputError(
                f"base endpoint {spec.base_url} (model {spec.model!r}) failed{tries}: {_scrubbed(err, spec)}; "
                "the records written so far stay: rerun with resume=true once it answers"
            ) from None
        self.usage.add(response.usage.prompt_tokens if response.usage else len(row))
        logprobs = response.choices[0].logprobs if response.choices else None
        if logprobs is None or not logprobs.top_logprobs:
            raise UserInputError(
                f"base endpoint {spec.base_url} (model {spec.model!r}) returned no top log-probs; it must honour "
                "logprobs on /v1/completions"
            )
        top: dict[int, float] = {}
        for token, logprob in logprobs.top_logprobs[0].items():
            token_id = self.table.id_of(token)
            # strings of another tokenizer that fall on one of our tokens share its probability
            top[token_id] = float(logprob) if token_id not in top else _log_add(top[token_id], float(logprob))
        return top


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow."""
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high)) if math.isfinite(low) else high


def _retried(err: Exception) -> bool:
    import openai

    status = getattr(err, "status_code", None)
    return isinstance(err, openai.APIConnectionError) or status in (408, 409, 429) or (status or 0) >= 500


def _scrubbed(err: Exception, spec: ApiSpec) -> str:
    """The endpoint's message on one line, never the key."""
    text = first_line(err)
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    return text.replace(key, "***") if key else text


def load_api(spec: ApiSpec) -> ApiModel:
    """The endpoint's client and the local tokenizer; nothing is asked of the endpoint until decoding."""
    return _load_cached(spec)


@cache
def _load_cached(spec: ApiSpec) -> ApiModel:
    try:
        import openai
    except ModuleNotFoundError:
        raise UserInputError("an api model needs the openai client: pip install 'proxy-composer[api]'") from None
    key = "unused"  # an endpoint without auth (a local server) still gets a placeholder: the client needs one
    if spec.api_key_env is not None:
        key = os.environ.get(spec.api_key_env, "")
        if not key:
            raise UserInputError(
                f"api model {spec.model!r}: the environment variable {spec.api_key_env} is unset or empty; "
                "export the endpoint's key there"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"api model {spec.model!r}: tokenizer {spec.tokenizer!r} could not be loaded "
            f"({first_line(err)}); give a local folder or a hub id"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    for name in ("httpx", "httpx2", "openai"):  # one INFO line per request otherwise, under Hydra's logging
        logging.getLogger(name).setLevel(logging.WARNING)
    client = openai.OpenAI(base_url=spec.base_url, api_key=key, timeout=spec.timeout, max_retries=spec.tries - 1)
    return ApiModel(spec=spec, tokenizer=tokenizer, client=client, table=TokenTable(tokenizer))


class ApiStream:
    """The stream protocol (``experts.stream.ModelStream``'s) over an endpoint: the rows are kept here, as
    ids, and each position is one request with the whole row as its prompt (an endpoint keeps no cache)."""

    def __init__(self, loaded: ApiModel) -> None:
        self.loaded = loaded
        self.model = None
        self.device = loaded.device
        self.rows: list[list[int]] = []
        self.prompt_widths: list[int] = []

    def start(self, rows: list[list[int]]) -> torch.Tensor:
        self.rows = [list(row) for row in rows]
        self.prompt_widths = [len(row) for row in rows]
        return self.loaded.next_token_logprobs(self.rows)

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (R, n); the log-probs after each of them, (R, n, V): n requests per row."""
        fed = tokens.tolist()
        prefixes = [row + ids[: j + 1] for row, ids in zip(self.rows, fed, strict=True) for j in range(len(ids))]
        for row, ids in zip(self.rows, fed, strict=True):
            row.extend(ids)
        out = self.loaded.next_token_logprobs(prefixes)
        return out.reshape(len(self.rows), tokens.shape[1], -1)

    def crop(self, generated: int) -> None:
        self.rows = [row[: width + generated] for row, width in zip(self.rows, self.prompt_widths, strict=True)]

    def retract(self, keep: torch.Tensor, appended: int) -> None:
        """Row r keeps the first ``keep[r]`` of the last ``appended`` tokens: rows hold their own lengths."""
        self.rows = [row[: len(row) - appended + k] for row, k in zip(self.rows, keep.tolist(), strict=True)]

    joinable = True

    def merge(self, other: ApiStream) -> None:
        self.rows += other.rows
        self.prompt_widths += other.prompt_widths

    def select(self, rows: torch.Tensor) -> None:
        index = rows.tolist()
        self.rows = [list(self.rows[i]) for i in index]
        self.prompt_widths = [self.prompt_widths[i] for i in index]

    def tail_logits(self, rows: list[list[int]], keep: int) -> torch.Tensor:
        """For scoring: the log-probs at each row's last ``keep`` positions, (R, keep, V), a request each."""
        prefixes = [row[: max(len(row) - keep + j + 1, 1)] for row in rows for j in range(keep)]  # >= 1 token
        return self.loaded.next_token_logprobs(prefixes).reshape(len(rows), keep, -1)
