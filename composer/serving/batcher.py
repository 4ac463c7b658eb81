"""Dynamic batching: requests that arrive together decode as one batch, each row with its own settings.

One worker thread owns the composer. It takes the first waiting request, gathers those that arrive within
``wait_s`` (up to ``max_batch`` rows), and decodes them with ``Composer.generate_each``: per-row weights,
decoding settings, seeds and stopping. A row whose client went away is dropped at its next token.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from composer.decoding import DecodingConfig
from composer.engine import Completion, Composer
from composer.trace import TokenLogprobs


@dataclass(eq=False)
class Job:
    """One request's prompt (a choice ``n`` is its config's ``num_return_sequences``), and where its tokens go.

    ``on_token(choice, tokens, finish_reason, logprobs)`` and ``on_done(completions or error)`` are called from the
    worker thread.
    """

    prompt: str
    prompt_ids: list[int]
    config: DecodingConfig
    weights: dict[str, float]
    logprobs: int | None
    on_token: Callable[[int, list[int], str, TokenLogprobs | None], None]
    on_done: Callable[[list[Completion] | BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class Batcher:
    def __init__(self, composer: Composer, max_batch: int, wait_s: float) -> None:
        self.composer = composer
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.batches = 0  # decoded so far, and their rows: the mean batch says how well requests were batched
        self.rows = 0
        self.cancelled = 0  # rows dropped because their client went away
        threading.Thread(target=self._work, name="proxy-compose-batcher", daemon=True).start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            batch = self._gather()
            if batch:
                self._decode(batch)

    def _gather(self) -> list[Job]:
        """The first waiting job and those arriving within ``wait_s`` of it, up to ``max_batch`` rows."""
        batch = [self.jobs.get()]
        deadline = time.monotonic() + self.wait_s
        while sum(j.config.num_return_sequences for j in batch) < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if sum(j.config.num_return_sequences for j in batch) + job.config.num_return_sequences > self.max_batch:
                self.jobs.put(job)  # the next batch starts with it
                break
            batch.append(job)
        return [job for job in batch if not job.cancelled.is_set()]

    def _decode(self, batch: list[Job]) -> None:
        owner = [j for j, job in enumerate(batch) for _ in range(job.config.num_return_sequences)]
        choice = [sum(1 for o in owner[:row] if o == owner[row]) for row in range(len(owner))]

        def listener(row: int, tokens: list[int], reason: str, logprobs: TokenLogprobs | None) -> bool:
            job = batch[owner[row]]
            if job.cancelled.is_set():
                self.cancelled += 1
                return False
            job.on_token(choice[row], tokens, reason, logprobs)
            return True

        wanted = [job.logprobs for job in batch if job.logprobs is not None]
        try:
            completions = self.composer.generate_each(
                [job.prompt for job in batch],
                [job.config for job in batch],
                [job.weights for job in batch],
                logprobs=max(wanted) if wanted else None,
                listener=listener,
                prompt_ids=[job.prompt_ids for job in batch],
            )
        except Exception as err:  # the batch's requests learn why; the worker serves the next batch
            for job in batch:
                job.on_done(err)
            return
        self.batches += 1
        self.rows += len(owner)
        for j, job in enumerate(batch):
            job.on_done([c for c, o in zip(completions, owner, strict=True) if o == j])
