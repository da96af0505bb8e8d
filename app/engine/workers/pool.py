"""One model's workers over its one queue: started together, reported together.

`devices` in a model entry gives one worker per device (or a count); each loads its own
copy of the weights. `devices = "auto"` starts one, and once it is up on the CPU a second
where the host has the cores and memory (app.engine.workers.host): the two split the
cores, and the second is kept for queries while bulk work is paced.

The model serves while any worker serves: with some down it is "degraded", with none it
is not ready until a restarted worker is back (requests already queued wait for it), and
if no worker can come back the queue fails and new requests get 503.

With `background_threads` set, the pool also starts a background worker: one more process
with its own copy of the weights that serves only the queue's background lane (Batch API
jobs) at the lowest CPU priority. The model is ready without it (it is still loading, or
"degraded" while it restarts); if it cannot start or is given up, the model's workers take
the background lane, interactive inputs first. With `background_on_cpu_only`
(`batch.worker = "auto"`) it starts only once the model's workers are up and on the CPU.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from app.config import ModelSettings
from app.engine.batcher import Batcher, Priority, not_serving
from app.engine.workers import host
from app.engine.workers.process import ProcessWorker
from app.engine.workers.thread import ThreadWorker
from app.errors import InternalServerError
from app.models.protocol import BackendLoader, TokenizedText

logger = logging.getLogger(__name__)


class Worker(Protocol):
    index: int
    lane: Priority
    failure: str | None
    can_restart: bool
    batches: int
    dimensions: int
    device: str
    pid: int | None

    @property
    def in_flight(self) -> int: ...

    @property
    def serving(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def worker_devices(entry: ModelSettings) -> list[str]:
    """The device of each worker: the list as given, or a count spread over CUDA devices
    (`auto:N` is cuda:N where CUDA is present, else the CPU) or repeated on the CPU."""
    if isinstance(entry.devices, list):
        return list(entry.devices)
    count = entry.devices
    if count == "auto" or count == 1:  # "auto": a second CPU worker may follow (ModelPool)
        return [entry.device]
    if entry.device in ("auto", "cuda"):
        return [f"{entry.device}:{i}" for i in range(count)]
    return [entry.device] * count


def _share_queue(worker: Worker, workers: list[Worker]) -> None:
    """`worker` pipelines a batch only while none of `workers` (the model's interactive
    workers, a list that may grow) is idle. Asked under the batcher's lock, under which
    every worker's batches in flight change."""
    if isinstance(worker, ProcessWorker):
        worker.sibling_idle = lambda: any(w is not worker and w.serving and not w.in_flight for w in workers)


def _keep_for_queries(last: Worker, others: list[Worker]) -> None:
    """The last of two or more CPU workers is kept for queries while bulk work is paced,
    while another of them serves."""
    if isinstance(last, ProcessWorker) and others:
        last.keep_for_queries = lambda: any(w.serving for w in others)


class ModelPool:
    def __init__(
        self,
        entry: ModelSettings,
        batcher: Batcher,
        loader: BackendLoader,
        *,
        kind: str,
        threads: int,
        warmup: Sequence[TokenizedText],
        background_threads: int | None = None,
        background_on_cpu_only: bool = False,
    ) -> None:
        self.entry = entry
        self.batcher = batcher
        self._loader, self._threads, self._warmup = loader, threads, warmup
        self._lock = threading.Lock()
        # The interactive workers; the background worker, if any, is apart.
        self.workers: list[Worker] = []
        self.background: ProcessWorker | None = None
        self.background_failure = ""
        self._stopped = False
        # `batch.worker = "auto"`: the background worker is started only once the model's
        # workers are up and on the CPU (on CUDA a second copy costs GPU memory, and CPU
        # priority does not preempt GPU work: the model's workers share the lane instead).
        self._background_on_cpu_only = background_on_cpu_only
        devices = worker_devices(entry)
        for index, device in enumerate(devices):
            placed = msgspec.structs.replace(entry, device=device)
            if kind == "thread":
                load = functools.partial(loader.load_model, placed)
                self.workers.append(ThreadWorker(index, batcher, load, warmup, self._changed))
            else:
                self.workers.append(
                    ProcessWorker(index, batcher, loader, placed, threads, warmup, self._changed)
                )
        _keep_for_queries(self.workers[-1], self.workers[:-1])
        for worker in self.workers:
            _share_queue(worker, self.workers)
        self._auto_second = entry.devices == "auto" and kind == "process"
        if background_threads is not None and kind == "process":
            placed = msgspec.structs.replace(entry, device=devices[0])
            self.background = ProcessWorker(
                len(devices) + self._auto_second,
                batcher,
                loader,
                placed,
                background_threads,
                warmup,
                self._changed,
                background=True,
            )

    @property
    def all_workers(self) -> list[Worker]:
        """The interactive workers, then the background worker if there is one."""
        return [*self.workers, *([self.background] if self.background is not None else [])]

    def start(self) -> None:
        """Start the model's workers in parallel (each loads its own weights); raise if any
        fails. The background worker starts meanwhile and on: it loads at the lowest CPU
        priority, which must not hold up readiness on a busy machine. Its lane waits for it;
        if it cannot start, the model's workers take that lane."""
        if self.background is not None and not self._background_on_cpu_only:
            self._launch_background()
        errors: list[BaseException] = []

        def start(worker: Worker) -> None:
            try:
                worker.start()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(w,), daemon=True) for w in self.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        if self._auto_second:
            self._add_cpu_worker()
        if self.background is not None and self._background_on_cpu_only:
            if any(device.startswith("cuda") for device in self.devices):
                logger.info(
                    'model %s: on %s, batch work shares the model\'s workers (batch.worker = "auto")',
                    self.entry.name,
                    ", ".join(self.devices),
                )
                self.background = None
            else:
                self._launch_background()

    def _add_cpu_worker(self) -> None:
        """`devices = "auto"`: a second worker beside the first where it is up on the CPU and
        the host has the cores and memory. It loads while the model already serves, and joins
        the pool once up; the first then leaves it its share of the cores."""
        first = self.workers[0]
        if not isinstance(first, ProcessWorker) or first.device != "cpu" or first.pid is None:
            return
        plan = host.plan_second_worker(
            host.usable_cores(), host.resident_bytes(first.pid), host.available_memory(), self._threads
        )
        if not plan.threads:
            logger.info("model %s: one CPU worker (%s)", self.entry.name, plan.reason)
            return
        placed = msgspec.structs.replace(self.entry, device="cpu")
        second = ProcessWorker(
            1, self.batcher, self._loader, placed, plan.threads, self._warmup, self._changed
        )
        _keep_for_queries(second, [first])
        _share_queue(second, self.workers)
        first.threads_lent = lambda: max(0, first.threads - plan.threads) if second.serving else 0

        def failed(why: str) -> None:
            message = "model %s: a second CPU worker failed to start (%s); one serves"
            logger.error(message, self.entry.name, why)

        def joined() -> None:
            self.workers.append(second)
            logger.info(
                "model %s: a second CPU worker serves (torch threads per worker: %d; kept for queries)",
                self.entry.name,
                second.threads,
            )

        self._start_late(second, "worker-1", failed, joined)

    def _launch_background(self) -> None:
        assert self.background is not None
        self.batcher.set_background_worker(True)

        def failed(why: str) -> None:
            self._drop_background(f"the background worker failed to start: {why}")

        self._start_late(self.background, "background-worker-start", failed)

    def _start_late(
        self,
        worker: ProcessWorker,
        name: str,
        failed: Callable[[str], None],
        joined: Callable[[], None] = lambda: None,
    ) -> None:
        """Start `worker` on a thread of its own while the model already serves: `joined()`
        once it is up (under the pool's lock, so a stop meanwhile is seen), `failed(why)` if
        it cannot start, unless the pool stopped meanwhile (a shutdown signal reaches a
        loading worker too)."""

        def start() -> None:
            try:
                worker.start()
            except Exception as exc:
                if not self._stopped:
                    failed(f"{type(exc).__name__}: {exc}")
                return
            with self._lock:
                stopped = self._stopped
                if not stopped:
                    joined()
            if stopped:
                worker.stop()

        threading.Thread(target=start, name=name, daemon=True).start()

    def _drop_background(self, reason: str) -> None:
        """Serve the background lane from the model's workers from now on."""
        logger.error("model %s: %s; batch work runs on the model's workers", self.entry.name, reason)
        self.background_failure = reason
        self.batcher.set_background_worker(False)

    def stop(self) -> None:
        with self._lock:  # a second CPU worker coming up now sees it and stops itself
            self._stopped = True
            workers = self.all_workers
        self.batcher.stop()
        # In parallel: each may wait half a second for its process to exit, and a shutdown
        # has a deadline however many workers (a background one included) there are.
        stopping = [threading.Thread(target=w.stop, daemon=True) for w in workers]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(10)

    @property
    def dimensions(self) -> int:
        return self.workers[0].dimensions

    @property
    def devices(self) -> list[str]:
        return [w.device for w in self.workers]

    def _changed(self) -> None:
        """A worker died or came back: fail the queue if nothing can serve any more."""
        background = self.background
        lost = background is not None and not background.serving and not background.can_restart
        if background is not None and lost and not self.background_failure:
            self._drop_background(background.failure or "the background worker was given up")
        if any(w.serving or (w.failure is not None and w.can_restart) for w in self.workers):
            return
        if self.batcher.stopping:
            return
        reason = "; ".join(w.failure or "" for w in self.workers)
        logger.critical("model %s: no worker can serve: %s", self.entry.name, reason)
        # Requests queued when the last worker died get a 500; later ones a 503.
        self.batcher.refuse_all(InternalServerError())
        self.batcher.refusal = not_serving(self.entry.name)

    def state(self) -> tuple[str, str]:
        """("ready" | "degraded" | "not serving" | "failed", reason)."""
        serving = [w for w in self.workers if w.serving]
        failures = "; ".join(w.failure for w in self.workers if w.failure)
        if len(serving) == len(self.workers):
            background = self._background_state()
            return ("degraded", background) if background else ("ready", "")
        if serving:
            return "degraded", f"{len(serving)} of {len(self.workers)} workers serving ({failures})"
        if any(w.can_restart and w.failure for w in self.workers):
            return "not serving", f"no worker serving, restarting ({failures})"
        return "failed", failures or "no worker serving"

    def _background_state(self) -> str:
        """Why the background worker (Batch API jobs) is not serving, or "" when it is."""
        if self.background_failure:
            return self.background_failure
        worker = self.background
        if worker is None or worker.serving or worker.failure is None:  # serving, or still loading
            return ""
        return f"the background worker (batch jobs) is restarting ({worker.failure or 'starting'})"
