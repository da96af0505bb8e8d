"""The batcher's short wait for company, on the batcher alone (a recording stand-in model)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from app.engine.batcher import Batcher, Job
from app.engine.observer import NullObserver
from app.models.protocol import TokenizedText


class RecordingModel:
    dimensions = 4
    max_length = 64
    vocab_size = 100
    device = "cpu"

    def __init__(self) -> None:
        self.batches: list[tuple[float, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        raise NotImplementedError

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        self.gate.wait(10)
        self.batches.append((time.monotonic(), len(batch)))
        return np.ones((len(batch), self.dimensions), dtype=np.float32)

    def decode_ids(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


def _text(i: int) -> list[TokenizedText]:
    return [TokenizedText(input_ids=(1, i + 2), pooled=2, full_length=2)]


def _batcher(model: RecordingModel, wait: float) -> Batcher:
    batcher = Batcher(
        "m",
        model,
        max_batch_size=32,
        max_batch_tokens=10_000,
        max_queue_tokens=100_000,
        observer=NullObserver(),
        max_wait_seconds=wait,
    )
    batcher.start()
    return batcher


def test_a_lone_client_never_waits() -> None:
    model = RecordingModel()
    batcher = _batcher(model, wait=0.5)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        for i in range(3):
            job = Job(_text(i), 4, loop)
            batcher.submit(job)
            await job.future
        return time.monotonic() - started

    try:
        assert asyncio.run(run()) < 0.25  # three requests, none waited 0.5 s
    finally:
        batcher.stop()


def test_clients_of_the_last_batch_are_waited_for() -> None:
    model = RecordingModel()
    batcher = _batcher(model, wait=0.5)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        # Four clients served together once...
        model.gate.clear()
        blocker = Job(_text(99), 4, loop)
        batcher.submit(blocker)
        await asyncio.sleep(0.1)
        first = [Job(_text(i), 4, loop) for i in range(4)]
        for job in first:
            batcher.submit(job)
        model.gate.set()
        await asyncio.gather(blocker.future, *(j.future for j in first))
        # ...then send their next requests 50 ms apart: one batch, not four.
        second = []
        for i in range(4):
            job = Job(_text(10 + i), 4, loop)
            batcher.submit(job)
            second.append(job)
            await asyncio.sleep(0.05)
        await asyncio.gather(*(j.future for j in second))

    try:
        asyncio.run(run())
    finally:
        batcher.stop()
    assert [size for _, size in model.batches] == [1, 4, 4]
