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

The queue has two lanes: interactive requests and background work (Batch API jobs). A
batch never mixes them. With a background worker (`background_worker`), it alone takes the
background lane and the model's workers only the interactive one; without, the model's
workers take background inputs only while no interactive input is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from app.engine.forward_cost import ForwardCost
from app.engine.gateway_load import GatewayLoad
from app.engine.observer import EngineObserver
from app.engine.pacing import ForwardPace
from app.engine.pipelining import ReturnTime, merging_pays
from app.engine.planning import first_input, select_batch
from app.errors import GatewayError, InternalServerError, OverloadedError
from app.models.protocol import TokenizedText

logger = logging.getLogger(__name__)

OVERLOADED = "The engine is currently overloaded, please try again later."
RETRY_AFTER = {"Retry-After": "1"}

Vectors = npt.NDArray[np.float32]
Priority = Literal["interactive", "background"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "background")


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
    priority: Priority = "interactive"
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
    def priority(self) -> Priority:
        # A batch is taken from one lane, so every item has its lane.
        return self.items[0].job.priority

    @property
    def padded_tokens(self) -> int:
        return padded_tokens(self.rows)

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches of about half the rows each, for a batch that ran out of memory."""
        half = len(self.rows) // 2
        first = [item for item, row in zip(self.items, self.where, strict=True) if row < half]
        second = [item for item, row in zip(self.items, self.where, strict=True) if row >= half]
        return Batch.of(first), Batch.of(second)


class Backlog(NamedTuple):
    """What one lane holds, for a worker deciding whether to take a batch from it now."""

    inputs: int
    tokens: int
    # Requests with inputs queued, against how many the lane's last batch served: once the
    # one reaches the other, the clients that batch answered are all back.
    requests: int
    last_batch_requests: int
    # A forward's fixed cost (app.engine.forward_cost) and how long one request takes to come
    # back (app.engine.pipelining.ReturnTime), None while not known; the longest wait for company.
    fixed_seconds: float | None = None
    return_per_request: float | None = None
    max_wait_seconds: float = 0.0

    @property
    def all_back(self) -> bool:
        return self.requests >= self.last_batch_requests

    @property
    def send_early(self) -> bool:
        """Whether the queued requests go to a busy worker now, to run next: once the clients
        of the batch in flight are all back, unless holding them for that batch's clients
        pays (app.engine.pipelining)."""
        return self.all_back and not merging_pays(
            self.fixed_seconds,
            self.return_per_request,
            self.requests,
            self.last_batch_requests,
            self.max_wait_seconds,
        )


# may_take(lane, its backlog): whether a worker wants a batch from that lane now.
MayTake = Callable[[Priority, Backlog], bool]


def always(priority: Priority, backlog: Backlog) -> bool:
    return True


@dataclass(eq=False)
class _Lane:
    """One lane's queued inputs, oldest first."""

    items: list[Item] = field(default_factory=list)
    tokens: int = 0
    jobs: set[Job] = field(default_factory=set)
    # How many requests the lane's last batch served: evidence of how many clients are active.
    expected_jobs: int = 1
    # How soon the clients of its batches come back (the pipelining decision).
    returns: ReturnTime = field(default_factory=ReturnTime)


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
        load: GatewayLoad | None = None,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self._max_queue_tokens = max_queue_tokens
        self._observer = observer
        self._max_wait = max_wait_seconds
        self._max_unserved = max_unserved_seconds
        self._pace = ForwardPace(max_batch_tokens, max_batch_seconds)
        self._cost = ForwardCost()
        self.cond = threading.Condition()
        self._lanes: dict[Priority, _Lane] = {p: _Lane() for p in PRIORITIES}
        # True while a dedicated background worker serves the background lane (app.engine.workers.pool).
        self._background_worker = False
        self.stopping = False
        # The gateway's own CPU-heavy work, which the workers' forwards leave a core to.
        self.load = load or GatewayLoad()
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
        """Whether any input waits, in either lane (read under `cond`, or as a hint)."""
        return any(lane.items for lane in self._lanes.values())

    @property
    def background_worker(self) -> bool:
        return self._background_worker

    def set_background_worker(self, present: bool) -> None:
        """Whether a worker of its own serves the background lane; if not, the model's workers do."""
        with self.cond:
            self._background_worker = present
            self.cond.notify_all()

    @property
    def paced(self) -> bool:
        """Forwards are being kept short: interactive requests were seen lately and bulk work
        is queued. The caller holds the lock."""
        return self._pace.interactive(time.perf_counter()) and self._bulk_queued()

    def spare_cores(self) -> int:
        """Cores a forward sent now should leave to the gateway (app.engine.gateway_load):
        one while interactive requests are about and the gateway has CPU-heavy work in hand
        or just had. Bulk work alone keeps every thread: there throughput is what counts."""
        return 1 if self._pace.interactive_seen(time.perf_counter()) and self.load.recently_busy() else 0

    def query_queued(self) -> bool:
        """An interactive request that one short forward serves whole has inputs queued (the
        caller holds the lock)."""
        return any(self._is_query(job) for job in self._lanes["interactive"].jobs)

    def _is_query(self, job: Job) -> bool:
        return not self._pace.is_bulk(job.tokens)

    def _bulk_queued(self) -> bool:
        """Work that needs more than a short forward waits for the model's workers: a big
        interactive request, or background work when no worker of its own serves it."""
        lanes = ("interactive",) if self._background_worker else PRIORITIES
        return any(self._pace.is_bulk(job.tokens) for p in lanes for job in self._lanes[p].jobs)

    def warmed_up(self, padded_tokens: int, seconds: float) -> None:
        """A worker's warm-up forward: the model's first speed estimate."""
        with self.cond:
            self._pace.completed(padded_tokens, seconds, self.max_batch_tokens)
            self._cost.observe(padded_tokens, seconds)

    @property
    def depth(self) -> tuple[int, int]:
        """(requests, tokens) waiting in the queue, both lanes."""
        with self.cond:
            return self._depth()

    def _depth(self) -> tuple[int, int]:
        lanes = self._lanes.values()
        return sum(len(lane.jobs) for lane in lanes), sum(lane.tokens for lane in lanes)

    # -- called from the event loop ----------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job's inputs, or refuse at once (503) when the queue is full or nothing serves."""
        with self.cond:
            if self.stopping or self.refusal is not None:
                raise self.refusal or not_serving(self.model)
            # One bound over both lanes; an empty queue always admits, so one request up to
            # the per-request limit fits.
            requests, tokens = self._depth()
            if requests and tokens + job.tokens > self._max_queue_tokens:
                raise overloaded()
            job.enqueued = job.last_taken = time.perf_counter()
            if job.priority == "interactive":  # background work never asks for short forwards
                self._pace.request(job.tokens, job.enqueued)
            lane = self._lanes[job.priority]
            lane.returns.arrival(job.enqueued)
            lane.items.extend(Item(job, i, text) for i, text in enumerate(job.items))
            lane.tokens += job.tokens
            lane.jobs.add(job)
            self._report_depth()
            self.cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Drop a job's queued inputs (its client went away) before they reach the model."""
        with self.cond:
            if job in self._lanes[job.priority].jobs:
                self._drop(job)
                self._report_depth()

    # -- called from the workers' threads ----------------------------------------------------

    def _drop(self, job: Job) -> None:
        """Remove every queued input of `job`; the caller holds the lock."""
        lane = self._lanes[job.priority]
        lane.tokens -= sum(len(i.text.input_ids) for i in lane.items if i.job is job)
        lane.items = [item for item in lane.items if item.job is not job]
        lane.jobs.discard(job)

    def _report_depth(self) -> None:
        self._observer.on_queue_depth(self.model, *self._depth())

    def _lane_to_take(self, may_take: MayTake, background_only: bool) -> Priority | None:
        """The lane a worker takes its next batch from, if any; the caller holds the lock.
        Background inputs go to a worker of the model only while no interactive one waits."""
        if background_only:
            order: tuple[Priority, ...] = ("background",)
        elif self._background_worker:
            order = ("interactive",)
        else:
            order = PRIORITIES
        for priority in order:
            lane = self._lanes[priority]
            if lane.items:
                backlog = Backlog(
                    len(lane.items),
                    lane.tokens,
                    len(lane.jobs),
                    lane.expected_jobs,
                    self._cost.fixed_seconds,
                    lane.returns.per_request,
                    self._max_wait,
                )
                return priority if may_take(priority, backlog) else None
        return None

    def take(
        self,
        may_take: MayTake,
        running: Callable[[], bool] = lambda: True,
        *,
        background_only: bool = False,
        queries_only: Callable[[], bool] = lambda: False,
    ) -> Batch | None:
        """The next batch, from one lane, waiting for work and for `may_take`; None when
        stopping or when `running()` turns false. Inputs whose callers went away are dropped,
        not returned. `background_only`: the caller is the background worker;
        `queries_only()`: the batch holds only inputs of requests one short forward serves."""
        with self.cond:
            while True:
                priority = None
                while not self.stopping and running():
                    priority = self._lane_to_take(may_take, background_only)
                    if priority is not None:
                        break
                    self.cond.wait()
                if self.stopping or not running() or priority is None:
                    return None
                lane = self._lanes[priority]
                yields = priority == "background" and not background_only and not self._background_worker
                self._wait_for_company(lane, self._lanes["interactive"] if yields else None)
                if self.stopping or not running():
                    return None
                if not lane.items or (yields and self._lanes["interactive"].items):
                    continue  # cancelled meanwhile, or an interactive input came first
                # None also when no query is left to take (another worker took it meanwhile).
                batch = self._plan(lane, background_only, priority == "interactive" and queries_only())
                if batch is not None:
                    return batch

    def _plan(self, lane: _Lane, background_only: bool, queries_only: bool = False) -> Batch | None:
        """Take the next batch's inputs out of `lane`; None if every one taken was cancelled.
        `queries_only`: only inputs of requests one short forward serves whole. The caller
        holds the lock."""
        now = time.perf_counter()
        # The background worker (a process of its own, at idle priority) is never paced.
        budget = self.max_batch_tokens if background_only else self._pace.cap(now, self._bulk_queued())
        offered = [i for i, item in enumerate(lane.items) if not queries_only or self._is_query(item.job)]
        if not offered:
            return None
        lengths = [len(lane.items[i].text.input_ids) for i in offered]
        owners = [lane.items[i].job for i in offered]
        first = first_input(
            lengths,
            owners,
            {job: now - job.last_taken for job in set(owners)},
            self._max_unserved,
            self.max_batch_size,
            budget,
        )
        picked = [
            offered[i]
            for i in select_batch(lengths, self.max_batch_size, budget, first, self._cost.padding_allowance())
        ]
        chosen = set(picked)
        items = [lane.items[i] for i in picked]
        lane.items = [item for i, item in enumerate(lane.items) if i not in chosen]
        lane.tokens -= sum(len(item.text.input_ids) for item in items)
        lane.jobs &= {item.job for item in lane.items}
        self._report_depth()
        live = [item for item in items if not item.job.gone]
        if not live:
            return None
        lane.expected_jobs = len({item.job for item in live})
        started = time.perf_counter()
        for item in live:
            item.job.last_taken = started
            if item.job.started is None:
                item.job.started = started
        batch = Batch.of(live)
        batch.budget = 0 if background_only else budget  # 0: not a sample of the model's speed
        return batch

    def _awaits_company(self, lane: _Lane) -> bool:
        """A batch taken from `lane` now would first wait for more of its clients' requests."""
        return (
            self._max_wait > 0
            and (len(lane.jobs) < lane.expected_jobs or self._merge_pays(lane))
            and len(lane.items) < self.max_batch_size
            and lane.tokens < self.max_batch_tokens
        )

    def _merge_pays(self, lane: _Lane) -> bool:
        """The clients of the lane's newest batch answered are coming back, soon enough, and
        one forward for them and the queued requests costs less (app.engine.pipelining)."""
        fixed, per_request = self._cost.fixed_seconds, lane.returns.per_request
        return merging_pays(fixed, per_request, len(lane.jobs), lane.returns.coming, self._max_wait)

    def _wait_for_company(self, lane: _Lane, yield_to: _Lane | None) -> None:
        """Wait briefly for the clients the lane's last batch served to send their next requests.

        With many clients in lock-step, their next requests arrive spread over the moment
        their answers go out; a batch formed from the first arrivals alone leaves the rest
        for a second, mostly empty batch. One client alone (the last batch served a single
        request) never waits. Requests that queued while the last batch ran also wait for
        that batch's clients where one forward for both groups pays (_merge_pays), so two
        groups of clients do not keep alternating in half-empty forwards. A background batch
        for a model's own worker stops waiting when an interactive input arrives
        (`yield_to`). The caller holds the lock.
        """
        deadline = time.monotonic() + self._max_wait
        while (
            not self.stopping and self._awaits_company(lane) and not (yield_to is not None and yield_to.items)
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
            if batch.budget:  # the model's own workers' forwards (not at idle priority)
                self._cost.observe(batch.padded_tokens, seconds)
            for item, row in zip(batch.items, batch.where, strict=True):
                item.job.vectors[item.index] = vectors[row]
                item.job.remaining -= 1
            finished = time.perf_counter()
            self._lanes[batch.priority].returns.answered(finished, len(batch.jobs))
            costs = self._cost.fixed_seconds, self._lanes["interactive"].returns.per_request
            for job in batch.jobs:
                job.compute_seconds += seconds
                job.last_taken = finished  # not idle while its input was in the forward
                if job.remaining == 0 and not job.finished:
                    job.finished = True
                    done.append(job)
        for job in done:
            job._settle(None)
        self._observer.on_batching_costs(self.model, *costs)

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
                if job in self._lanes[job.priority].jobs:
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
            jobs = set().union(*(lane.jobs for lane in self._lanes.values()))
            self._lanes = {p: _Lane() for p in PRIORITIES}
            self._report_depth()
            settle = [job for job in jobs if not job.finished]
            for job in settle:
                job.finished = True
            self.cond.notify_all()
        for job in settle:
            job._settle(error)
