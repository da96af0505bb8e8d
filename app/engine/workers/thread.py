"""A model worker in a thread of the gateway process: the model part runs in-process.

Kept for tests and tools that want a model without a process boundary (in-process test
doubles, one-process debugging); the gateway's default is worker processes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from app.engine.batcher import Batch, Batcher, Priority, Vectors, always, padded_tokens
from app.models.protocol import BatchMemoryError, EmbeddingModel, TokenizedText

logger = logging.getLogger(__name__)


class ThreadWorker:
    def __init__(
        self,
        index: int,
        batcher: Batcher,
        load: Callable[[], EmbeddingModel],
        warmup: Sequence[TokenizedText],
        on_change: Callable[[], None],
    ) -> None:
        self.index = index
        # A thread worker serves both lanes (interactive first): a thread cannot be preempted.
        self.lane: Priority = "interactive"
        self._batcher = batcher
        self._load = load
        self._warmup = warmup
        self._on_change = on_change
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.failure: str | None = None
        self.can_restart = False
        self.batches = 0
        self.dimensions = 0
        self.device = ""
        self.pid: int | None = None
        self.in_flight = 0

    @property
    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def start(self) -> None:
        """Load and warm up (blocking), then serve from a model thread."""
        model = self._load()
        started = time.perf_counter()
        model.embed(self._warmup)
        self._batcher.warmed_up(padded_tokens(self._warmup), time.perf_counter() - started)
        self.dimensions, self.device = model.dimensions, model.device
        self._thread = threading.Thread(
            target=self._run, args=(model,), name=f"model-{self._batcher.model}-{self.index}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._batcher.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _run(self, model: EmbeddingModel) -> None:
        batch: Batch | None = None
        try:
            while (batch := self._batcher.take(always, lambda: not self._stopping)) is not None:
                self._execute(model, batch)
                batch = None
        except BaseException as exc:
            self.failure = "model thread died: " + type(exc).__name__
            logger.critical("model %s: the model thread died", self._batcher.model, exc_info=exc)
            if batch is not None:
                self._batcher.fail(batch, exc, "failed: the model thread died")
            self._on_change()

    def _execute(self, model: EmbeddingModel, batch: Batch) -> None:
        started = time.perf_counter()
        self.in_flight = 1
        try:
            vectors = self._forward(model, batch.rows)
        except Exception as exc:
            self._batcher.fail(batch, exc)
            return
        finally:
            self.in_flight = 0
        self.batches += 1
        self._batcher.complete(batch, vectors, time.perf_counter() - started)

    def _forward(self, model: EmbeddingModel, rows: list[TokenizedText]) -> Vectors:
        """One forward pass; out of accelerator memory, the halves are run one after the other."""
        try:
            return model.embed(rows)
        except BatchMemoryError:
            if len(rows) == 1:
                raise
            half = len(rows) // 2
            logger.warning(
                "model %s: out of memory on %d rows; splitting the batch", self._batcher.model, len(rows)
            )
            return np.concatenate([self._forward(model, rows[:half]), self._forward(model, rows[half:])])
