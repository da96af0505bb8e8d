"""One model's workers over its one queue: started together, reported together.

`devices` in a model entry gives one worker per device (or a count); each loads its own
copy of the weights. The model serves while any worker serves: with some down it is
"degraded", with none it is not ready until a restarted worker is back (requests already
queued wait for it), and if no worker can come back the queue fails and new requests get
503.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import msgspec

from app.config import ModelSettings
from app.engine.batcher import Batcher, not_serving
from app.engine.workers.process import ProcessWorker
from app.engine.workers.thread import ThreadWorker
from app.errors import InternalServerError
from app.models.protocol import BackendLoader, TokenizedText

logger = logging.getLogger(__name__)


class Worker(Protocol):
    index: int
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
    if count == 1:
        return [entry.device]
    if entry.device in ("auto", "cuda"):
        return [f"{entry.device}:{i}" for i in range(count)]
    return [entry.device] * count


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
    ) -> None:
        self.entry = entry
        self.batcher = batcher
        self._lock = threading.Lock()
        self.workers: list[Worker] = []
        for index, device in enumerate(worker_devices(entry)):
            placed = msgspec.structs.replace(entry, device=device)
            if kind == "thread":
                load = functools.partial(loader.load_model, placed)
                self.workers.append(ThreadWorker(index, batcher, load, warmup, self._changed))
            else:
                self.workers.append(
                    ProcessWorker(index, batcher, loader, placed, threads, warmup, self._changed)
                )

    def start(self) -> None:
        """Start every worker in parallel (each loads its own weights); raise if any fails."""
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

    def stop(self) -> None:
        self.batcher.stop()
        for worker in self.workers:
            worker.stop()

    @property
    def dimensions(self) -> int:
        return self.workers[0].dimensions

    @property
    def devices(self) -> list[str]:
        return [w.device for w in self.workers]

    def _changed(self) -> None:
        """A worker died or came back: fail the queue if nothing can serve any more."""
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
            return "ready", ""
        if serving:
            return "degraded", f"{len(serving)} of {len(self.workers)} workers serving ({failures})"
        if any(w.can_restart and w.failure for w in self.workers):
            return "not serving", f"no worker serving, restarting ({failures})"
        return "failed", failures or "no worker serving"
