"""Continuous batching for the server: requests join the running batch between steps and leave it as they end.

One worker thread owns the composer and a ``composer.running.RunningBatch``. Before each step it takes the
requests that have arrived (while the batch is empty it waits for one, then ``wait_s`` for others), up to
``max_batch`` rows; each row decodes with its request's weights, settings, seed and stopping, and a request is
answered as soon as its rows end. A row whose client went away is dropped at its next token. Where a stream's
cache cannot take rows in (fixed-shape or sliding-window caches), requests wait for the batch to empty.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from composer.decoding import DecodingConfig
from composer.engine import Completion, Composer
from composer.running import Row, RunningBatch
from composer.trace import TokenLogprobs


@dataclass(eq=False)
class Job:
    """One request's prompt (a choice ``n`` is its config's ``num_return_sequences``), and where its tokens go.

    ``on_token(choice, tokens, finish_reason, logprobs)`` and ``on_done(completions or error)`` are called from
    the worker thread.
    """

    prompt: str
    prompt_ids: list[int]
    config: DecodingConfig
    weights: dict[str, float]
    logprobs: int | None
    on_token: Callable[[int, list[int], str, TokenLogprobs | None], None]
    on_done: Callable[[list[Completion] | BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows: list[Row] = field(default_factory=list)


class Batcher:
    def __init__(self, composer: Composer, max_batch: int, wait_s: float) -> None:
        self.composer = composer
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.running = RunningBatch(composer)
        self.steps = 0  # decoding steps so far, and the rows they advanced: the mean batch, rows / steps
        self.rows = 0
        self.requests = 0
        self.cancelled = 0  # rows dropped because their client went away
        self._waiting: Job | None = None  # taken from the queue but not yet room for it
        threading.Thread(target=self._work, name="proxy-compose-batcher", daemon=True).start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            arrived = self._arrivals()
            if arrived:
                self._join(arrived)
            if self.running.live:
                self._step()

    def _arrivals(self) -> list[Job]:
        """The jobs that fit now: while the batch is empty, the first to come and those within ``wait_s``."""
        room = self.max_batch - len(self.running.live)
        if not self.running.joinable or room <= 0:
            return []
        jobs: list[Job] = []
        deadline = None if self.running.live else time.monotonic() + self.wait_s
        while True:
            job = self._waiting or self._next(deadline, first=not jobs and not self.running.live)
            self._waiting = None
            if job is None:
                return jobs
            if job.cancelled.is_set():
                continue
            if sum(j.config.num_return_sequences for j in jobs) + job.config.num_return_sequences > room:
                self._waiting = job  # the next step's first
                return jobs
            jobs.append(job)

    def _next(self, deadline: float | None, first: bool) -> Job | None:
        try:
            if first:
                return self.jobs.get()
            if deadline is None:
                return self.jobs.get_nowait()
            return self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            return None

    def _join(self, jobs: list[Job]) -> None:
        try:
            rows = self.running.join(
                jobs,
                [job.prompt for job in jobs],
                [job.config for job in jobs],
                [job.weights for job in jobs],
                [job.prompt_ids for job in jobs],
            )
        except Exception as err:  # these requests learn why; the running batch goes on
            for job in jobs:
                job.on_done(err)
            return
        self.requests += len(jobs)
        for row in rows:
            row.tag.rows.append(row)

    def _step(self) -> None:
        def listener(row: Row, logprobs: TokenLogprobs | None) -> bool:
            job = row.tag
            if job.cancelled.is_set():
                self.cancelled += 1
                return False
            job.on_token(job.rows.index(row), row.tokens, row.reason, logprobs)
            return True

        wanted = [row.tag.logprobs for row in self.running.live if row.tag.logprobs is not None]
        live = len(self.running.live)
        try:
            ended = self.running.step(listener, max(wanted) if wanted else None)
        except Exception as err:  # every live request learns why; the next ones start a fresh batch
            for job in {id(row.tag): row.tag for row in self.running.live}.values():
                job.on_done(err)
            self.running = RunningBatch(self.composer)
            return
        self.steps += 1
        self.rows += live
        for job in {id(row.tag): row.tag for row in ended}.values():
            if all(row.ended for row in job.rows):
                job.on_done([row.completion(self.composer) for row in job.rows])
