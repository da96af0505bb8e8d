"""Dynamic batching for one loaded model: a bounded queue of tokenized inputs from many
requests, and one model thread that fills each forward pass up to a token budget.

As in text-embeddings-inference: requests arrive already tokenized and counted; the model
thread takes the oldest queued input plus those nearest to it in length (app.engine.planning),
runs them as one padded batch, and answers each request when its last input is done. A batch
that raises fails only the requests in it; a batch that runs out of accelerator memory is
split in halves and retried; if the thread itself dies, every waiter is failed at once and
`alive` turns false, so nothing is left hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.engine.observer import EngineObserver
from app.engine.planning import select_batch
from app.errors import GatewayError, InternalServerError, OverloadedError
from app.models.protocol import BatchMemoryError, EmbeddingBackend, TokenizedText

logger = logging.getLogger(__name__)

OVERLOADED = "The engine is currently overloaded, please try again later."
RETRY_AFTER = {"Retry-After": "1"}

Vectors = npt.NDArray[np.float32]


def overloaded() -> OverloadedError:
    return OverloadedError(OVERLOADED, headers=RETRY_AFTER)


@dataclass(eq=False)
class Job:
    """One request's inputs on their way through the queue.

    Created on the event loop; the model thread fills `vectors` and resolves `future`
    through the loop, so the handler simply awaits it.
    """

    items: Sequence[TokenizedText]
    dimensions: int
    loop: asyncio.AbstractEventLoop
    request_id: str = "-"
    future: asyncio.Future[Vectors] = field(init=False)
    vectors: Vectors = field(init=False)
    remaining: int = field(init=False)
    tokens: int = field(init=False)
    enqueued: float = field(init=False, default=0.0)
    started: float | None = field(init=False, default=None)
    compute_seconds: float = field(init=False, default=0.0)
    finished: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()
        self.vectors = np.empty((len(self.items), self.dimensions), dtype=np.float32)
        self.remaining = len(self.items)
        self.tokens = sum(len(t.input_ids) for t in self.items)

    @property
    def queue_seconds(self) -> float:
        return (self.started or self.enqueued) - self.enqueued

    def _settle(self, error: BaseException | None) -> None:
        """Called on the model thread, once; resolves the future on the event loop."""
        self.finished = True

        def resolve() -> None:
            if self.future.done():  # the caller went away
                return
            if error is None:
                self.future.set_result(self.vectors)
            else:
                self.future.set_exception(error)

        # A closed loop means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(resolve)


@dataclass(eq=False, slots=True)
class _Item:
    job: Job
    index: int
    text: TokenizedText


class Batcher:
    def __init__(
        self,
        model: str,
        backend: EmbeddingBackend,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue_tokens: int,
        observer: EngineObserver,
        max_wait_seconds: float = 0.0,
    ) -> None:
        self._model = model
        self._backend = backend
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_queue_tokens = max_queue_tokens
        self._observer = observer
        self._max_wait = max_wait_seconds
        # How many requests the last batch served: evidence of how many clients are active.
        self._expected_jobs = 1
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._queued_tokens = 0
        self._queued_jobs: set[Job] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"model-{model}", daemon=True)
        self.failure: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    @property
    def depth(self) -> tuple[int, int]:
        """(requests, tokens) waiting in the queue."""
        with self._cond:
            return len(self._queued_jobs), self._queued_tokens

    # -- called from the event loop ----------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job's inputs, or refuse at once (503) when the queue is full or dead."""
        with self._cond:
            if self._stopping or not self.alive:
                raise OverloadedError(
                    f"The model `{self._model}` is not serving; please try again later.", headers=RETRY_AFTER
                )
            # An empty queue always admits, so one request up to the per-request limit fits.
            if self._queue and self._queued_tokens + job.tokens > self._max_queue_tokens:
                raise overloaded()
            job.enqueued = time.perf_counter()
            self._queue.extend(_Item(job, i, text) for i, text in enumerate(job.items))
            self._queued_tokens += job.tokens
            self._queued_jobs.add(job)
            self._report_depth()
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Drop a job's queued inputs (its client went away) before they reach the model."""
        with self._cond:
            if job in self._queued_jobs:
                self._drop(job)
                self._report_depth()

    # -- the model thread --------------------------------------------------------------------

    def _drop(self, job: Job) -> None:
        """Remove every queued input of `job`; the caller holds the lock."""
        kept = [item for item in self._queue if item.job is not job]
        self._queued_tokens -= sum(len(i.text.input_ids) for i in self._queue if i.job is job)
        self._queue = kept
        self._queued_jobs.discard(job)

    def _report_depth(self) -> None:
        self._observer.on_queue_depth(self._model, len(self._queued_jobs), self._queued_tokens)

    def _take(self) -> list[_Item] | None:
        """The next batch, waiting for work; None when stopping."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            self._wait_for_company()
            if self._stopping:
                return None
            picked = select_batch(
                [len(item.text.input_ids) for item in self._queue],
                self._max_batch_size,
                self._max_batch_tokens,
            )
            chosen = set(picked)
            batch = [self._queue[i] for i in picked]
            self._queue = [item for i, item in enumerate(self._queue) if i not in chosen]
            self._queued_tokens -= sum(len(item.text.input_ids) for item in batch)
            still_queued = {item.job for item in self._queue}
            self._queued_jobs &= still_queued
            self._expected_jobs = len({item.job for item in batch})
            self._report_depth()
            return batch

    def _wait_for_company(self) -> None:
        """Wait briefly for the clients the last batch served to send their next requests.

        With many clients in lock-step, their next requests arrive spread over the moment
        their answers go out; a batch formed from the first arrivals alone leaves the rest
        for a second, mostly empty batch. One client alone (the last batch served a single
        request) never waits. The caller holds the lock.
        """
        deadline = time.monotonic() + self._max_wait
        while (
            not self._stopping
            and len(self._queued_jobs) < self._expected_jobs
            and len(self._queue) < self._max_batch_size
            and self._queued_tokens < self._max_batch_tokens
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while (taken := self._take()) is not None:
                batch = taken
                self._execute(batch)
                batch = []
        except BaseException as exc:
            self.failure = f"model thread died: {type(exc).__name__}"
            logger.critical("model %s: the model thread died", self._model, exc_info=exc)
        finally:
            self._fail_waiting(batch)

    def _fail_waiting(self, running: list[_Item]) -> None:
        """Nothing may wait on a thread that is gone: fail the running batch and the queue."""
        with self._cond:
            jobs = {item.job for item in self._queue} | {item.job for item in running}
            self._queue.clear()
            self._queued_jobs.clear()
            self._queued_tokens = 0
        for job in jobs:
            if not job.finished:
                job._settle(overloaded() if self.failure is None else InternalServerError())

    def _execute(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.job.finished and not item.job.future.cancelled()]
        if not live:
            return
        # Identical inputs in one batch are computed once.
        rows: dict[TokenizedText, int] = {}
        where = [rows.setdefault(item.text, len(rows)) for item in live]
        unique = list(rows)
        started = time.perf_counter()
        for item in live:
            if item.job.started is None:
                item.job.started = started
        try:
            vectors = self._forward(unique)
        except Exception as exc:
            self._fail_batch(live, exc)
            return
        seconds = time.perf_counter() - started
        self._observer.on_batch(
            self._model, len(unique), max(len(t.input_ids) for t in unique) * len(unique), seconds
        )
        for item, row in zip(live, where, strict=True):
            job = item.job
            job.vectors[item.index] = vectors[row]
            job.remaining -= 1
        for job in {item.job for item in live}:
            job.compute_seconds += seconds
            if job.remaining == 0 and not job.finished:
                job._settle(None)

    def _forward(self, rows: list[TokenizedText]) -> Vectors:
        """One forward pass; out of accelerator memory, the halves are run one after the other."""
        try:
            return self._backend.embed(rows)
        except BatchMemoryError:
            if len(rows) == 1:
                raise
            half = len(rows) // 2
            logger.warning("model %s: out of memory on %d rows; splitting the batch", self._model, len(rows))
            return np.concatenate([self._forward(rows[:half]), self._forward(rows[half:])])

    def _fail_batch(self, live: list[_Item], exc: Exception) -> None:
        jobs = {item.job for item in live}
        logger.error(
            "model %s: a batch of %d inputs failed; requests %s",
            self._model,
            len(live),
            ",".join(sorted(job.request_id for job in jobs)),
            exc_info=exc,
        )
        error = exc if isinstance(exc, GatewayError) else InternalServerError()
        with self._cond:
            for job in jobs:
                if job in self._queued_jobs:
                    self._drop(job)
            self._report_depth()
        for job in jobs:
            if not job.finished:
                job._settle(error)
