"""Background priority (Batch API work) in the engine, on the shared test backend's fake parts:
the two lanes never share a batch, interactive inputs go first when the model's workers serve
both, and with process workers a background worker of its own, at the lowest CPU priority,
serves the background lane alone."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from app.config import BatchSettings, EngineSettings, ModelSettings
from app.engine.batcher import Batcher, Job, always
from app.engine.engine import EmbeddingEngine
from app.engine.observer import NullObserver
from app.models.protocol import TokenizedText
from tests.fake_backend import Controls, WordTokenizer, start_engine

MODEL = "fake"
DIMS = 8
ENTRY = ModelSettings(name=MODEL, base_model="fake", max_length=32, device="cpu")


def make_engine(
    tmp: Path,
    workers: str,
    batch_worker: str = "background",
    max_batch_size: int = 32,
    device: str = "cpu",
) -> tuple[EmbeddingEngine, Controls]:
    return start_engine(
        tmp,
        EngineSettings(workers=workers, max_batch_wait_ms=0, max_batch_size=max_batch_size),  # type: ignore[arg-type]
        msgspec.structs.replace(ENTRY, device=device),
        batch=BatchSettings(worker=batch_worker),  # type: ignore[arg-type]
        dimensions=DIMS,
    )


def _ids(text: str) -> tuple[int, ...]:
    return WordTokenizer(ENTRY).tokenize([text], "")[0].input_ids


def _batches(controls: Controls) -> list[tuple[int, set[tuple[int, ...]]]]:
    """Each batch run: (pid, its rows)."""
    return [
        (int(b["pid"]), {tuple(r) for r in b["rows"]})  # type: ignore[arg-type,union-attr]
        for b in controls.batches()
    ]


@pytest.fixture()
def shared(tmp_path: Path) -> Iterator[tuple[EmbeddingEngine, Controls]]:
    engine, controls = make_engine(tmp_path, "thread")
    yield engine, controls
    controls.open_gate()
    engine.stop()


def test_interactive_inputs_go_first_and_never_share_a_batch_with_background_ones(
    shared: tuple[EmbeddingEngine, Controls],
) -> None:
    """Thread workers serve both lanes: the background inputs queued first still wait for the
    interactive one queued after them, and no batch holds both."""
    engine, controls = shared
    background = [f"batch line {i}" for i in range(3)]

    async def scenario() -> None:
        controls.close_gate()
        holder = asyncio.ensure_future(engine.embed(MODEL, "holds the model"))
        assert await asyncio.to_thread(controls.wait_entered)
        later = [asyncio.ensure_future(engine.embed(MODEL, t, priority="background")) for t in background]
        await asyncio.sleep(0.1)
        urgent = asyncio.ensure_future(engine.embed(MODEL, "an interactive request"))
        await asyncio.sleep(0.1)
        controls.open_gate()
        await asyncio.wait_for(asyncio.gather(holder, urgent, *later), 30)

    asyncio.run(scenario())
    rows = [batch for _, batch in _batches(controls)]
    assert rows[0] == {_ids("holds the model")}
    assert rows[1] == {_ids("an interactive request")}  # alone, and before the older background inputs
    assert set().union(*rows[2:]) == {_ids(t) for t in background}


def test_background_vectors_equal_interactive_ones(shared: tuple[EmbeddingEngine, Controls]) -> None:
    engine, _ = shared

    async def both() -> tuple[np.ndarray, np.ndarray]:
        a = await engine.embed(MODEL, ["same text", "other"], priority="background")
        b = await engine.embed(MODEL, ["same text", "other"])
        return a.vectors, b.vectors

    background, interactive = asyncio.run(both())
    assert np.array_equal(background, interactive)


def _take_in_thread(
    batcher: Batcher, **kwargs: bool
) -> tuple[threading.Thread, list[object], threading.Event]:
    got: list[object] = []
    stop = threading.Event()

    def run() -> None:
        got.append(batcher.take(always, lambda: not stop.is_set(), **kwargs))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got, stop


def test_with_a_background_worker_each_side_takes_only_its_lane() -> None:
    batcher = Batcher(
        MODEL, max_batch_size=32, max_batch_tokens=10_000, max_queue_tokens=10_000, observer=NullObserver()
    )
    batcher.set_background_worker(True)
    rows = [TokenizedText((1, 2, 3), 3, 3)]

    async def queue() -> tuple[Job, Job]:
        loop = asyncio.get_running_loop()
        interactive, background = Job(rows, DIMS, loop), Job(rows, DIMS, loop, priority="background")
        batcher.submit(background)
        batcher.submit(interactive)
        return interactive, background

    interactive, background = asyncio.run(queue())
    # The background worker takes the background job, although an interactive one waits too.
    taken = batcher.take(always, background_only=True)
    assert taken is not None and taken.jobs == {background} and taken.priority == "background"
    # A model's worker takes the interactive job, then finds nothing it may take.
    taken = batcher.take(always)
    assert taken is not None and taken.jobs == {interactive}
    asyncio.run(_submit_background(batcher, rows))
    thread, got, stop = _take_in_thread(batcher)
    thread.join(0.3)
    assert thread.is_alive() and not got  # the queued background input is not for it
    # Without the background worker (it was given up), the model's worker takes it.
    batcher.set_background_worker(False)
    thread.join(5)
    assert got and got[0] is not None and got[0].priority == "background"  # type: ignore[attr-defined]
    stop.set()


async def _submit_background(batcher: Batcher, rows: list[TokenizedText]) -> None:
    batcher.submit(Job(rows, DIMS, asyncio.get_running_loop(), priority="background"))


@pytest.fixture()
def processes(tmp_path: Path) -> Iterator[tuple[EmbeddingEngine, Controls]]:
    engine, controls = make_engine(tmp_path, "process")
    yield engine, controls
    controls.open_gate()
    engine.stop()


def _threads_of(pid: int) -> list[int]:
    return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_background_worker_is_a_process_of_its_own_at_idle_priority(
    processes: tuple[EmbeddingEngine, Controls],
) -> None:
    engine, controls = processes
    deadline = time.monotonic() + 60  # it loads at the lowest priority, not holding up readiness
    while not all(w["serving"] for w in engine.workers(MODEL)) and time.monotonic() < deadline:
        time.sleep(0.05)
    controls.forget_batches()  # its warm-up batch
    workers = engine.workers(MODEL)
    assert [w["lane"] for w in workers] == ["interactive", "background"]
    interactive, background = (int(w["pid"]) for w in workers)  # type: ignore[call-overload]
    assert len({interactive, background, os.getpid()}) == 3
    # Every thread of the background worker (torch's included) runs at SCHED_IDLE; the model's
    # worker keeps the normal policy.
    assert {os.sched_getscheduler(t) for t in _threads_of(background)} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(interactive) == os.SCHED_OTHER

    async def traffic() -> None:
        both = asyncio.gather(
            *(engine.embed(MODEL, f"batch line {i}", priority="background") for i in range(20)),
            *(engine.embed(MODEL, f"interactive {i}") for i in range(20)),
        )
        await asyncio.wait_for(both, 30)

    asyncio.run(traffic())
    by_pid: dict[int, set[tuple[int, ...]]] = {interactive: set(), background: set()}
    for pid, rows in _batches(controls):
        by_pid[pid] |= rows
    assert by_pid[background] == {_ids(f"batch line {i}") for i in range(20)}
    assert by_pid[interactive] == {_ids(f"interactive {i}") for i in range(20)}
    listed = {w["lane"]: w["batches"] for w in engine.workers(MODEL)}
    assert listed["background"] and listed["interactive"]


def test_a_shared_worker_process_takes_background_work_only_when_idle(tmp_path: Path) -> None:
    """`batch.worker = "shared"`: while a background batch runs, a full background batch waits
    in the queue rather than in the worker's pipe, and an interactive request that arrives
    goes next."""
    engine, controls = make_engine(tmp_path, "process", "shared", max_batch_size=1)

    async def scenario() -> None:
        controls.close_gate()
        first = asyncio.ensure_future(engine.embed(MODEL, "background one", priority="background"))
        assert await asyncio.to_thread(controls.wait_entered)
        second = asyncio.ensure_future(engine.embed(MODEL, "background two", priority="background"))
        await asyncio.sleep(0.2)
        urgent = asyncio.ensure_future(engine.embed(MODEL, "interactive"))
        await asyncio.sleep(0.2)
        controls.open_gate()
        await asyncio.wait_for(asyncio.gather(first, second, urgent), 30)

    try:
        asyncio.run(scenario())
        order = [rows for _, rows in _batches(controls)]
        assert order == [{_ids("background one")}, {_ids("interactive")}, {_ids("background two")}]
    finally:
        controls.open_gate()
        engine.stop()


def test_shared_mode_and_thread_workers_start_no_background_worker(tmp_path: Path) -> None:
    for workers, batch_worker in (("process", "shared"), ("thread", "background")):
        engine, _ = make_engine(tmp_path / workers, workers, batch_worker)
        try:
            assert [w["lane"] for w in engine.workers(MODEL)] == ["interactive"]
            vectors = asyncio.run(engine.embed(MODEL, "a batch line", priority="background")).vectors
            assert vectors.shape == (1, DIMS)
        finally:
            engine.stop()


@pytest.mark.parametrize(
    ("device", "lanes"), [("cpu", ["interactive", "background"]), ("cuda:0", ["interactive"])]
)
def test_auto_gives_a_background_worker_only_to_a_model_on_the_cpu(
    tmp_path: Path, device: str, lanes: list[str]
) -> None:
    """`batch.worker = "auto"` (the default): a model on the CPU gets its background worker;
    one on CUDA shares its workers (no second copy in GPU memory). The fake model reports
    the device it is given; nothing here touches a GPU."""
    engine, _ = make_engine(tmp_path, "process", "auto", device=device)
    try:
        deadline = time.monotonic() + 60  # the background worker loads after readiness
        while len(engine.workers(MODEL)) < len(lanes) or not all(w["serving"] for w in engine.workers(MODEL)):
            assert time.monotonic() < deadline, engine.workers(MODEL)
            time.sleep(0.05)
        time.sleep(0.3)  # (a background worker started late would show up here)
        assert [w["lane"] for w in engine.workers(MODEL)] == lanes
        vectors = asyncio.run(engine.embed(MODEL, ["a batch line"], priority="background")).vectors
        assert vectors.shape == (1, DIMS)
    finally:
        engine.stop()
