"""A model worker process, seen from the gateway: it owns the weights and runs forwards;
the gateway feeds it batches and settles the requests with what comes back.

Three threads per worker, none of which computes anything heavy:
- the feeder takes the next batch from the model's queue and writes it to the worker's
  pipe. It keeps up to PIPELINE batches in flight, so that the worker goes from one batch
  straight to the next, never idle while requests wait for the gateway to notice its
  reply. It sends a second batch only when the queue holds a full batch, or, where the
  worker's forwards leave the gateway's CPU alone (an accelerator, or cores of its own),
  as many requests as the last batch served (with clients in lock-step, the rest are
  waiting for the batch in flight), unless holding them for that batch's clients and one
  fuller forward pays (app.engine.pipelining). Planned early from a thin queue a batch would be
  small, and the worker pays a fixed cost per forward; and a CPU worker sharing the
  gateway's cores runs its next forward faster once the gateway has settled the last
  (bench/README.md). Never while another worker of the model is idle;
- the sender writes what the supervisor must send (halves of a batch that ran out of
  memory, the stop message), so that the thread reading replies never blocks on a full
  pipe while the worker blocks writing a reply;
- the supervisor reads replies, settles requests, and when the worker dies fails exactly
  the requests of the batches it held, then starts a new worker after a backoff.
A batch that runs out of accelerator memory comes back as MEMORY and is resent in halves.

A background worker (`background=True`) is the same process serving only the queue's
background lane, at the lowest CPU priority (app.engine.workers.priority): the OS takes
the CPU from it whenever an interactive forward or the gateway needs it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import multiprocessing
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from app.config import ModelSettings
from app.engine.batcher import Backlog, Batch, Batcher, Priority, not_serving, padded_tokens
from app.engine.workers import channel, host
from app.engine.workers.child import worker_main
from app.errors import InternalServerError
from app.models.protocol import BackendLoader, TokenizedText

logger = logging.getLogger(__name__)

PIPELINE = 2
# Restart delays after consecutive crashes: 0.5 s, 1 s, 2 s ... at most 30 s.
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0
# A worker that cannot even load this many times in a row is given up.
MAX_FAILED_LOADS = 5
_PIPE_BYTES = 1 << 20
APART_RECHECK_SECONDS = 2.0


class WorkerLoadError(Exception):
    """The worker process could not load or warm up the model."""


class _WorkerBatchError(Exception):
    """A forward pass raised in the worker (its message is logged, never sent to clients)."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


_main_lock = threading.Lock()


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start a child without the parent's main script: spawn would run it again in the
    child (a benchmark script, a notebook, stdin), and the worker needs nothing from it."""
    main = sys.modules["__main__"]
    with _main_lock:
        saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def _widen(conn: Connection) -> None:
    """Room for a whole batch of vectors in the pipe (Linux; elsewhere the default stays)."""
    with contextlib.suppress(Exception):
        import fcntl

        fcntl.fcntl(conn.fileno(), 1031, _PIPE_BYTES)  # F_SETPIPE_SZ


class ProcessWorker:
    def __init__(
        self,
        index: int,
        batcher: Batcher,
        loader: BackendLoader,
        entry: ModelSettings,
        threads: int,
        warmup: Sequence[TokenizedText],
        on_change: Callable[[], None],
        *,
        background: bool = False,
    ) -> None:
        self.index = index
        self.lane: Priority = "background" if background else "interactive"
        self._background = background
        self._batcher = batcher
        self._loader = loader
        self._entry = entry
        self._threads = threads
        self._warmup = list(warmup)
        self._on_change = on_change
        self._ctx = multiprocessing.get_context("spawn")
        self._ids = itertools.count(1)
        self._in_flight: dict[int, Batch] = {}
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._send_lock = threading.Lock()
        self._life = 0
        self._serving = False
        self._stopping = threading.Event()
        self._process: Any = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._supervisor: threading.Thread | None = None
        self._crashes = 0
        self.failure: str | None = None
        self.can_restart = True
        self.batches = 0
        # Whether to keep this worker for queries while forwards are paced (the pool sets it
        # on the last of two or more workers: true while another of them serves, so bulk
        # work never starves behind queries when the others are down).
        self.keep_for_queries: Callable[[], bool] = lambda: False
        # Torch threads this worker leaves to a sibling now (the pool sets it where a second
        # CPU worker shares its cores: `devices = "auto"`).
        self.threads_lent: Callable[[], int] = lambda: 0
        # Whether another worker of the model is idle now (the pool sets it where there are
        # several): a batch then goes to that one, never into this one's pipe to wait.
        self.sibling_idle: Callable[[], bool] = lambda: False
        self._apart = (-APART_RECHECK_SECONDS, False)  # (checked at, host.forwards_apart)
        self.threads = 0  # the worker's own torch threads, as it reported them
        self.dimensions = 0
        self.device = ""
        self.pid: int | None = None

    @property
    def serving(self) -> bool:
        return self._serving

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def name(self) -> str:
        kind = "background worker" if self._background else "worker"
        return f"{kind} {self.index} (pid {self.pid})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the process and wait until it has loaded and warmed up the model."""
        self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"worker-{self._batcher.model}-{self.index}", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._batcher.cond:
            self._life += 1
            self._batcher.cond.notify_all()
        self._outbox.put(channel.encode_stop())
        self._outbox.put(None)
        if self._process is not None:
            # Nothing it still computes is awaited (requests were answered or cut short
            # before the engine stops), and a shutdown has a deadline: a worker that has not
            # exited on its stop message within half a second is killed.
            self._process.join(0.5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        if self._supervisor is not None:
            self._supervisor.join(5)

    def _spawn(self) -> None:
        requests_in, requests = self._ctx.Pipe(duplex=False)
        replies, replies_out = self._ctx.Pipe(duplex=False)
        _widen(requests)
        _widen(replies)
        process = self._ctx.Process(
            target=worker_main,
            args=(requests_in, replies_out, self._loader, self._entry, self._threads, self._background),
            name=f"model-{self._batcher.model}-{'background' if self._background else self.index}",
            daemon=True,
        )
        with _main_hidden():
            process.start()
        # Our copies of the child's ends: closed, so that its death reads as end-of-file.
        requests_in.close()
        replies_out.close()
        try:
            hello = self._handshake(requests, replies, process)
        except BaseException:
            if process.is_alive():
                process.kill()
            process.join(5)
            requests.close()
            replies.close()
            raise
        self._process, self._requests, self._replies = process, requests, replies
        self.pid, self.dimensions, self.device = hello.pid, hello.dimensions, hello.device
        self.threads = hello.threads
        self._outbox = queue.SimpleQueue()
        with self._batcher.cond:
            self._life += 1
            life = self._life
            self._serving = True
            self._batcher.cond.notify_all()
        threading.Thread(target=self._feed, args=(life,), name=f"feeder-{self.index}", daemon=True).start()
        threading.Thread(
            target=self._send, args=(requests, self._outbox), name=f"sender-{self.index}", daemon=True
        ).start()

    def _handshake(self, requests: Connection, replies: Connection, process: Any) -> channel.Hello:
        """The worker's hello after loading, then one warm-up batch."""
        try:
            first = replies.recv_bytes()
            if channel.kind(first) == channel.LOAD_FAILED:
                raise WorkerLoadError(channel.decode_load_failed(first))
            hello = channel.decode_hello(first)
            requests.send_bytes(channel.encode_batch(0, self._warmup))
            reply = replies.recv_bytes()
        except (EOFError, OSError):
            process.join(5)
            raise WorkerLoadError(f"the worker {_describe_exit(process.exitcode)} while loading") from None
        if channel.kind(reply) != channel.VECTORS:
            detail = (
                channel.decode_failed(reply)[2] if channel.kind(reply) == channel.ERROR else "out of memory"
            )
            raise WorkerLoadError(f"the warm-up batch failed: {detail}")
        _, _, seconds = channel.decode_vectors(reply)
        if not self._background:  # at idle priority its speed is not the model workers'
            self._batcher.warmed_up(padded_tokens(self._warmup), seconds)
        return hello

    # -- feeding -----------------------------------------------------------------------------

    def _may_take(self, priority: Priority, backlog: Backlog) -> bool:
        # While bulk work is paced for queries, a reserved worker waits for a query and runs
        # queries only (_queries_only), so a query never waits for a document's forward
        # while the other workers run bulk rows.
        if self._queries_only() and not (priority == "interactive" and self._batcher.query_queued()):
            return False
        flying = len(self._in_flight)
        if flying == 0:
            return True
        if priority == "background" and not self._background:
            # Background work on a model's worker goes only to an idle one, so an interactive
            # input arriving next waits for at most one background forward.
            return False
        if priority == "interactive" and all(b.priority == "background" for b in self._in_flight.values()):
            return flying < PIPELINE  # next in the worker's pipe, ahead of any later background batch
        # While forwards are kept short for interactive requests, one batch at a time: a
        # request that arrives then waits for the forward in progress only, not for one
        # queued behind it too.
        if not self._background and self._batcher.paced:
            return False
        full = (
            backlog.inputs >= self._batcher.max_batch_size or backlog.tokens >= self._batcher.max_batch_tokens
        )
        early = backlog.send_early and self._forwards_apart()
        return flying < PIPELINE and (full or early) and not self.sibling_idle()

    def _forwards_apart(self) -> bool:
        """host.forwards_apart, checked again every few seconds (a worker may be pinned later)."""
        checked, apart = self._apart
        now = time.monotonic()
        if now - checked > APART_RECHECK_SECONDS:
            apart = host.forwards_apart(self.device, self.pid)
            self._apart = (now, apart)
        return apart

    def _queries_only(self) -> bool:
        """Whether this worker is kept for queries now (the caller holds the lock)."""
        return self.device == "cpu" and self._batcher.paced and self.keep_for_queries()

    def _feed(self, life: int) -> None:
        def running() -> bool:
            return self._life == life

        take = functools.partial(
            self._batcher.take, background_only=self._background, queries_only=self._queries_only
        )
        while (batch := take(self._may_take, running)) is not None:
            self._dispatch(batch, life)

    def _dispatch(self, batch: Batch, life: int) -> None:
        batch_id = next(self._ids)
        with self._batcher.cond:
            current = self._life == life
            if current:
                self._in_flight[batch_id] = batch
        if not current:  # the worker died between planning and sending
            self._batcher.fail(batch, InternalServerError(), "failed: the model worker died")
            return
        # A forward that a busy gateway would stall leaves it a core (ThreadShare). The
        # background worker is preempted by everything anyway.
        spare = 0 if self._background else min(255, self._batcher.spare_cores() + self.threads_lent())
        message = channel.encode_batch(batch_id, batch.rows, spare)
        requests = self._requests
        assert requests is not None
        # Written here rather than through the sender: one thread hop less per batch.
        # Blocking on a full pipe is fine here; the supervisor keeps reading replies.
        with self._send_lock, contextlib.suppress(OSError):  # a dead worker: the supervisor fails it
            requests.send_bytes(message)

    def _send(self, requests: Connection, outbox: queue.SimpleQueue[bytes | None]) -> None:
        while (message := outbox.get()) is not None:
            try:
                with self._send_lock:
                    requests.send_bytes(message)
            except OSError:
                return  # the worker is gone; the supervisor fails what it held
            if channel.kind(message) == channel.STOP:
                return

    # -- replies and restarts ----------------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            assert self._replies is not None
            self._receive(self._replies)
            lost = self._lose_worker()
            if self._stopping.is_set():
                for batch in lost:
                    self._batcher.fail(batch, not_serving(self._batcher.model), "failed: the gateway stopped")
                return
            code = self._process.exitcode if self._process is not None else None
            reason = f"{self.name} {_describe_exit(code)}"
            self.failure = reason
            logger.error("model %s: %s; %d batches in flight fail", self._batcher.model, reason, len(lost))
            for batch in lost:
                self._batcher.fail(batch, InternalServerError(), f"failed: the model {reason}")
            self._on_change()
            if not self._restart():
                return

    def _receive(self, replies: Connection) -> None:
        """Settle replies until the worker's pipe closes."""
        while True:
            try:
                message = replies.recv_bytes()
            except (EOFError, OSError):
                return
            kind = channel.kind(message)
            if kind == channel.VECTORS:
                batch_id, vectors, seconds = channel.decode_vectors(message)
                batch = self._finish(batch_id)
                self.batches += 1
                self._crashes = 0
                self._batcher.complete(batch, vectors, seconds)
            elif kind == channel.MEMORY:
                batch_id, _, _ = channel.decode_failed(message)
                self._split(self._finish(batch_id))
            elif kind == channel.ERROR:
                batch_id, _, detail = channel.decode_failed(message)
                self._batcher.fail(self._finish(batch_id), _WorkerBatchError(detail))

    def _finish(self, batch_id: int) -> Batch:
        with self._batcher.cond:
            batch = self._in_flight.pop(batch_id)
            # The feeder waits for room in flight only while inputs are queued; waking it
            # for nothing would take the GIL from the event loop just as it answers.
            if self._batcher.queued or self._stopping.is_set():
                self._batcher.cond.notify_all()
        return batch

    def _split(self, batch: Batch) -> None:
        if len(batch.rows) == 1:
            self._batcher.fail(batch, _WorkerBatchError("out of memory on a single input"))
            return
        logger.warning(
            "model %s: out of memory on %d rows; splitting the batch", self._batcher.model, len(batch.rows)
        )
        for half in batch.halves():
            batch_id = next(self._ids)
            with self._batcher.cond:
                self._in_flight[batch_id] = half
            self._outbox.put(channel.encode_batch(batch_id, half.rows))

    def _lose_worker(self) -> list[Batch]:
        """The worker is gone: stop feeding it and take back what it held."""
        with self._batcher.cond:
            self._life += 1
            self._serving = False
            lost = list(self._in_flight.values())
            self._in_flight.clear()
            self._batcher.cond.notify_all()
        self._outbox.put(None)
        if self._process is not None:
            self._process.join(5)
        for conn in (self._requests, self._replies):
            if conn is not None:
                conn.close()
        return lost

    def _restart(self) -> bool:
        """Start a new worker after a backoff; False when given up or stopping."""
        failed_loads = 0
        while True:
            self._crashes += 1
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self._crashes - 1))
            logger.warning("model %s: restarting worker %d in %.1f s", self._batcher.model, self.index, delay)
            if self._stopping.wait(delay):
                return False
            try:
                self._spawn()
            except Exception as exc:
                failed_loads += 1
                logger.error("model %s: worker %d failed to start: %s", self._batcher.model, self.index, exc)
                if failed_loads >= MAX_FAILED_LOADS:
                    self.can_restart = False
                    self.failure = f"worker {self.index} failed to start {failed_loads} times: {exc}"
                    self._on_change()
                    return False
                continue
            if self._stopping.is_set():  # stopped while it was starting
                self._process.kill()
                return False
            self.failure = None
            logger.warning(
                "model %s: worker %d restarted (pid %s)", self._batcher.model, self.index, self.pid
            )
            self._on_change()
            return True
