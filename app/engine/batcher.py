"""Dynamic batching for one loaded model: a bounded queue of tokenized inputs from many
requests, from which the model's workers take batches up to a token budget.

As in text-embeddings-inference: requests arrive already tokenized and counted; a worker
takes the next request's input plus those nearest to it in length (app.engine.planning:
small requests first, so none waits behind a big one's rows; the oldest first after a
bound), identical inputs once, and each request is answered when its last input is done.
While interactive requests are about and bulk work is queued, forwards are kept short
(app.engine.pacing). Workers
(app.engine.workers) run the batches, in a thread or in a worker process; a batch that
fails fails only the requests in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.engine.observer import EngineObserver
from app.engine.pacing import ForwardPace
from app.engine.planning import first_input, select_batch
from app.errors import GatewayError, InternalServerError, OverloadedError
from app.models.protocol import TokenizedText

logger = logging.getLogger(__name__)

OVERLOADED = "The engine is currently overloaded, please try again later."
RETRY_AFTER = {"Retry-After": "1"}

Vectors = npt.NDArray[np.float32]


def overloaded() -> OverloadedError:
    return OverloadedError(OVERLOADED, headers=RETRY_AFTER)


def not_serving(model: str) -> OverloadedError:
    return OverloadedError(
        f"The model `{model}` is not serving; please try again later.", headers=RETRY_AFTER
    )


@dataclass(eq=False)
class Job:
    """One request's inputs on their way through the queue.

    Created on the event loop; workers fill `vectors` and resolve `future` through the
    loop, so the handler simply awaits it.
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
    # When one of its inputs last went into or came out of a forward (or when it was queued).
    last_taken: float = field(init=False, default=0.0)
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

    @property
    def gone(self) -> bool:
        return self.finished or self.future.cancelled()

    def _settle(self, error: BaseException | None) -> None:
        """Called on a worker's thread, once; resolves the future on the event loop."""
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


def padded_tokens(rows: Sequence[TokenizedText]) -> int:
    """What a forward over `rows` costs: the longest row times the count."""
    return max((len(t.input_ids) for t in rows), default=0) * len(rows)


@dataclass(eq=False, slots=True)
class Item:
    job: Job
    index: int
    text: TokenizedText


@dataclass(eq=False)
class Batch:
    """Inputs taken for one forward pass: `rows` are the distinct inputs, `where[i]` is the
    row of `items[i]`."""

    items: list[Item]
    rows: list[TokenizedText]
    where: list[int]
    # The padded-token budget it was planned under (0: not planned from the queue).
    budget: int = 0

    @classmethod
    def of(cls, items: list[Item]) -> Batch:
        # Identical inputs in one batch are computed once.
        index: dict[TokenizedText, int] = {}
        where = [index.setdefault(item.text, len(index)) for item in items]
        return cls(items, list(index), where)

    @property
    def jobs(self) -> set[Job]:
        return {item.job for item in self.items}

    @property
    def padded_tokens(self) -> int:
        return padded_tokens(self.rows)

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches of about half the rows each, for a batch that ran out of memory."""
        half = len(self.rows) // 2
        first = [item for item, row in zip(self.items, self.where, strict=True) if row < half]
        second = [item for item, row in zip(self.items, self.where, strict=True) if row >= half]
        return Batch.of(first), Batch.of(second)


# may_take(queued inputs, queued tokens): whether a worker wants a batch now.
MayTake = Callable[[int, int], bool]


class Batcher:
    def __init__(
        self,
        model: str,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue_tokens: int,
        observer: EngineObserver,
        max_wait_seconds: float = 0.0,
        max_batch_seconds: float = 0.0,
        max_unserved_seconds: float = 2.0,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self._max_queue_tokens = max_queue_tokens
        self._observer = observer
        self._max_wait = max_wait_seconds
        self._max_unserved = max_unserved_seconds
        self._pace = ForwardPace(max_batch_tokens, max_batch_seconds)
        # How many requests the last batch served: evidence of how many clients are active.
        self._expected_jobs = 1
        self.cond = threading.Condition()
        self._queue: list[Item] = []
        self._queued_tokens = 0
        self._queued_jobs: set[Job] = set()
        self.stopping = False
        # Set when no worker can serve any more: new requests are refused with it.
        self.refusal: GatewayError | None = None

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    @property
    def queued(self) -> bool:
        """Whether any input waits (read under `cond`, or as a hint)."""
        return bool(self._queue)

    @property
    def paced(self) -> bool:
        """Forwards are being kept short: interactive requests were seen lately and bulk work
        is queued. The caller holds the lock."""
        return self._pace.interactive(time.perf_counter()) and self._bulk_queued()

    def _bulk_queued(self) -> bool:
        return any(self._pace.is_bulk(job.tokens) for job in self._queued_jobs)

    def warmed_up(self, padded_tokens: int, seconds: float) -> None:
        """A worker's warm-up forward: the model's first speed estimate."""
        with self.cond:
            self._pace.completed(padded_tokens, seconds, self.max_batch_tokens)

    @property
    def depth(self) -> tuple[int, int]:
        """(requests, tokens) waiting in the queue."""
        with self.cond:
            return len(self._queued_jobs), self._queued_tokens

    # -- called from the event loop ----------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job's inputs, or refuse at once (503) when the queue is full or nothing serves."""
        with self.cond:
            if self.stopping or self.refusal is not None:
                raise self.refusal or not_serving(self.model)
            # An empty queue always admits, so one request up to the per-request limit fits.
            if self._queue and self._queued_tokens + job.tokens > self._max_queue_tokens:
                raise overloaded()
            job.enqueued = job.last_taken = time.perf_counter()
            self._pace.request(job.tokens, job.enqueued)
            self._queue.extend(Item(job, i, text) for i, text in enumerate(job.items))
            self._queued_tokens += job.tokens
            self._queued_jobs.add(job)
            self._report_depth()
            self.cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Drop a job's queued inputs (its client went away) before they reach the model."""
        with self.cond:
            if job in self._queued_jobs:
                self._drop(job)
                self._report_depth()

    # -- called from the workers' threads ----------------------------------------------------

    def _drop(self, job: Job) -> None:
        """Remove every queued input of `job`; the caller holds the lock."""
        kept = [item for item in self._queue if item.job is not job]
        self._queued_tokens -= sum(len(i.text.input_ids) for i in self._queue if i.job is job)
        self._queue = kept
        self._queued_jobs.discard(job)

    def _report_depth(self) -> None:
        self._observer.on_queue_depth(self.model, len(self._queued_jobs), self._queued_tokens)

    def take(self, may_take: MayTake, running: Callable[[], bool] = lambda: True) -> Batch | None:
        """The next batch, waiting for work and for `may_take`; None when stopping or when
        `running()` turns false. Inputs whose callers went away are dropped, not returned."""
        with self.cond:
            while True:
                while (
                    not self.stopping
                    and running()
                    and not (self._queue and may_take(len(self._queue), self._queued_tokens))
                ):
                    self.cond.wait()
                self._wait_for_company()
                if self.stopping or not running():
                    return None
                now = time.perf_counter()
                budget = self._pace.cap(now, self._bulk_queued())
                lengths = [len(item.text.input_ids) for item in self._queue]
                first = first_input(
                    lengths,
                    [item.job for item in self._queue],
                    {job: now - job.last_taken for job in self._queued_jobs},
                    self._max_unserved,
                    self.max_batch_size,
                    budget,
                )
                picked = select_batch(lengths, self.max_batch_size, budget, first)
                chosen = set(picked)
                items = [self._queue[i] for i in picked]
                self._queue = [item for i, item in enumerate(self._queue) if i not in chosen]
                self._queued_tokens -= sum(len(item.text.input_ids) for item in items)
                self._queued_jobs &= {item.job for item in self._queue}
                self._report_depth()
                live = [item for item in items if not item.job.gone]
                if not live:
                    continue
                self._expected_jobs = len({item.job for item in live})
                started = time.perf_counter()
                for item in live:
                    item.job.last_taken = started
                    if item.job.started is None:
                        item.job.started = started
                batch = Batch.of(live)
                batch.budget = budget
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
            not self.stopping
            and len(self._queued_jobs) < self._expected_jobs
            and len(self._queue) < self.max_batch_size
            and self._queued_tokens < self.max_batch_tokens
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.cond.wait(left)

    def complete(self, batch: Batch, vectors: Vectors, seconds: float) -> None:
        """A batch's vectors are back: fill its jobs, answer those now complete."""
        self._observer.on_batch(self.model, len(batch.rows), batch.padded_tokens, seconds)
        done = []
        with self.cond:  # several workers may complete parts of one job
            self._pace.completed(batch.padded_tokens, seconds, batch.budget)
            for item, row in zip(batch.items, batch.where, strict=True):
                item.job.vectors[item.index] = vectors[row]
                item.job.remaining -= 1
            finished = time.perf_counter()
            for job in batch.jobs:
                job.compute_seconds += seconds
                job.last_taken = finished  # not idle while its input was in the forward
                if job.remaining == 0 and not job.finished:
                    job.finished = True
                    done.append(job)
        for job in done:
            job._settle(None)

    def fail(self, batch: Batch, exc: BaseException, why: str = "failed") -> None:
        """A batch failed: only its requests fail (their other queued inputs are dropped)."""
        jobs = batch.jobs
        logger.error(
            "model %s: a batch of %d inputs %s; requests %s",
            self.model,
            len(batch.items),
            why,
            ",".join(sorted(job.request_id for job in jobs)),
            exc_info=None if isinstance(exc, GatewayError) else exc,
        )
        error = exc if isinstance(exc, GatewayError) else InternalServerError()
        with self.cond:
            for job in jobs:
                if job in self._queued_jobs:
                    self._drop(job)
            self._report_depth()
            settle = [job for job in jobs if not job.finished]
            for job in settle:
                job.finished = True
        for job in settle:
            job._settle(error)

    def refuse_all(self, error: GatewayError) -> None:
        """Nothing can serve the model any more: fail the queue and refuse what comes."""
        with self.cond:
            self.refusal = error
            jobs = set(self._queued_jobs)
            self._queue.clear()
            self._queued_jobs.clear()
            self._queued_tokens = 0
            self._report_depth()
            settle = [job for job in jobs if not job.finished]
            for job in settle:
                job.finished = True
            self.cond.notify_all()
        for job in settle:
            job._settle(error)
