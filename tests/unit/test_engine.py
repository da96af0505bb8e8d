"""The engine without HTTP, on the shared test backend's fake parts (a word-hash tokenizer
and hash vectors): dimensions, normalisation, backpressure, cancellation, deduplication, the
batcher's wait for company, and the death of a model thread or worker process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.config import EngineSettings, ModelSettings
from app.engine.engine import EmbeddingEngine
from app.engine.workers import host, process
from app.errors import InternalServerError, InvalidRequestError, OverloadedError
from tests.fake_backend import Controls, WordTokenizer, start_engine

MODEL = "fake"
DIMS = 8


def make_engine(
    tmp: Path,
    workers: str = "thread",
    *,
    device: str = "cpu",
    devices: int = 1,
    forward: float | tuple[float, float] = 0.0,
    **engine: object,
) -> tuple[EmbeddingEngine, Controls]:
    """`forward`: seconds each forward takes, or (fixed seconds, seconds per padded token);
    `device`: the (fake) device it runs on."""
    return start_engine(
        tmp,
        EngineSettings(workers=workers, **engine),  # type: ignore[arg-type]
        ModelSettings(name=MODEL, base_model="fake", max_length=32, device=device, devices=devices),
        dimensions=DIMS,
        forward_seconds=forward if isinstance(forward, tuple) else (forward, 0.0),
    )


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[tuple[EmbeddingEngine, Controls]]:
    engine, controls = make_engine(tmp_path, max_batch_wait_ms=0)
    yield engine, controls
    controls.open_gate()
    engine.stop()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_vectors_are_unit_length_and_cut_to_dimensions(rig: tuple[EmbeddingEngine, Controls]) -> None:
    engine, _ = rig
    full = run(engine.embed(MODEL, ["one text", "another one"])).vectors  # type: ignore[attr-defined]
    assert full.shape == (2, DIMS)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=1e-6)
    cut = run(engine.embed(MODEL, ["one text"], dimensions=3)).vectors  # type: ignore[attr-defined]
    assert cut.shape == (1, 3)
    assert np.linalg.norm(cut) == pytest.approx(1.0)
    # The cut vector is the full one's first 3 components, renormalised.
    raw = full[0, :3] / np.linalg.norm(full[0, :3])
    np.testing.assert_allclose(cut[0], raw, rtol=1e-5)
    with pytest.raises(InvalidRequestError, match="from 1 to 8 dimensions"):
        run(engine.embed(MODEL, "x", dimensions=DIMS + 1))


def test_identical_inputs_run_once_and_count_each_time(rig: tuple[EmbeddingEngine, Controls]) -> None:
    engine, controls = rig
    result = run(engine.embed(MODEL, ["same words", "same words", "other words"]))
    assert [len(b["rows"]) for b in controls.batches()] == [2]  # type: ignore[arg-type]
    assert result.prompt_tokens == 9  # type: ignore[attr-defined]
    vectors = result.vectors  # type: ignore[attr-defined]
    assert np.array_equal(vectors[0], vectors[1]) and not np.allclose(vectors[0], vectors[2])


def test_a_full_queue_refuses_at_once(tmp_path: Path) -> None:
    engine, controls = make_engine(tmp_path, max_queue_requests=2)

    async def scenario() -> None:
        controls.close_gate()
        first = asyncio.ensure_future(engine.embed(MODEL, "first"))
        assert await asyncio.to_thread(controls.wait_entered)
        second = asyncio.ensure_future(engine.embed(MODEL, "second"))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        with pytest.raises(OverloadedError) as refused:
            await engine.embed(MODEL, "third")
        assert time.perf_counter() - started < 0.5
        assert refused.value.headers == {"Retry-After": "1"}
        controls.open_gate()
        await asyncio.gather(first, second)

    try:
        run(scenario())
    finally:
        controls.open_gate()
        engine.stop()


def test_a_cancelled_request_never_reaches_the_model(rig: tuple[EmbeddingEngine, Controls]) -> None:
    engine, controls = rig

    async def scenario() -> None:
        controls.close_gate()
        holder = asyncio.ensure_future(engine.embed(MODEL, "holds the model"))
        assert await asyncio.to_thread(controls.wait_entered)
        gone = asyncio.ensure_future(engine.embed(MODEL, "the client hangs up"))
        await asyncio.sleep(0.1)
        assert engine.queue_depth()[MODEL][0] == 1
        gone.cancel()
        await asyncio.sleep(0.05)
        assert engine.queue_depth()[MODEL] == (0, 0)
        controls.open_gate()
        await holder
        await engine.embed(MODEL, "a later request")

    run(scenario())
    rows = [tuple(r) for b in controls.batches() for r in b["rows"]]  # type: ignore[union-attr]
    assert len(rows) == 2  # the holder and the later request, never the cancelled one


def test_clients_of_the_last_batch_are_waited_for_a_lone_client_never(tmp_path: Path) -> None:
    engine, controls = make_engine(tmp_path, max_batch_wait_ms=500)

    async def scenario() -> float:
        # A lone client never waits for company.
        started = time.monotonic()
        for i in range(3):
            await engine.embed(MODEL, f"alone {i}")
        lone = time.monotonic() - started
        # Four clients served together once...
        controls.close_gate()
        blocker = asyncio.ensure_future(engine.embed(MODEL, "blocker"))
        assert await asyncio.to_thread(controls.wait_entered)
        first = [asyncio.ensure_future(engine.embed(MODEL, f"first {i}")) for i in range(4)]
        await asyncio.sleep(0.1)
        controls.open_gate()
        await asyncio.gather(blocker, *first)
        # ...then send their next requests 50 ms apart: one batch, not four.
        second = []
        for i in range(4):
            second.append(asyncio.ensure_future(engine.embed(MODEL, f"second {i}")))
            await asyncio.sleep(0.05)
        await asyncio.gather(*second)
        return lone

    try:
        assert run(scenario()) < 0.25  # three requests, none waited 0.5 s
    finally:
        engine.stop()
    assert [len(b["rows"]) for b in controls.batches()] == [1, 1, 1, 1, 4, 4]  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_a_dead_model_fails_its_batch_at_once(tmp_path: Path, workers: str) -> None:
    """A model thread that dies takes the model down; a worker process that dies is restarted."""
    engine, controls = make_engine(tmp_path, workers=workers)
    doomed = "this input kills the model"
    controls.set("kill", [fake_ids(doomed)])

    async def scenario() -> None:
        started = time.perf_counter()
        with pytest.raises(InternalServerError):
            await asyncio.wait_for(engine.embed(MODEL, doomed), 10)
        assert time.perf_counter() - started < 5
        if workers == "thread":
            assert engine.status()[MODEL].startswith("failed: model thread died")
            with pytest.raises(OverloadedError):
                await engine.embed(MODEL, "after the crash")
        else:
            assert engine.status()[MODEL].startswith("not serving: no worker serving")
            assert not engine.ready
            # Queued meanwhile, served by the restarted worker.
            await asyncio.wait_for(engine.embed(MODEL, "after the crash"), 60)
            assert engine.ready and engine.status()[MODEL] == "ready"

    try:
        run(scenario())
    finally:
        engine.stop()


def fake_ids(text: str) -> list[int]:
    tokenizer = WordTokenizer(ModelSettings(name=MODEL, base_model="fake"))
    return list(tokenizer.tokenize([text], "")[0].input_ids)


class _OneAtATime:
    """Wraps a tokenizer part: records which threads used it and whether two ever overlapped."""

    def __init__(self, inner: object) -> None:
        import threading

        self._inner = inner
        self._guard = threading.Lock()
        self.inside = 0
        self.overlaps = 0
        self.threads: set[int] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def tokenize(self, texts: list[str], instruction: str) -> object:
        import threading

        with self._guard:
            self.inside += 1
            self.overlaps += self.inside > 1
            self.threads.add(threading.get_ident())
        try:
            time.sleep(0.002)  # wide enough for an overlap to show
            return self._inner.tokenize(texts, instruction)  # type: ignore[attr-defined]
        finally:
            with self._guard:
                self.inside -= 1


def test_small_requests_tokenize_on_the_loop_never_beside_the_tokenizer_thread(
    rig: tuple[EmbeddingEngine, Controls],
) -> None:
    """A query-sized request is tokenized on the event loop when the tokenizer is idle (no
    trips to its thread); a big one goes to the thread in turns; the two never overlap."""
    import threading

    engine, _ = rig
    slot = engine._slots[MODEL]
    guarded = _OneAtATime(slot.tokenizer)
    slot.tokenizer = guarded  # type: ignore[assignment]
    big = [f"text {i} " + "word " * 4000 for i in range(12)]  # several turns of 16K characters

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        heavy = asyncio.ensure_future(engine.embed(MODEL, big))
        smalls = []
        for i in range(40):
            smalls.append(asyncio.ensure_future(engine.embed(MODEL, f"small request {i}")))
            await asyncio.sleep(0.001)
        results = await asyncio.gather(heavy, *smalls)
        assert all(r.vectors.shape[1] == DIMS for r in results)
        assert loop_thread in guarded.threads  # some small ones ran inline
        assert len(guarded.threads) == 2  # and the big one on the tokenizer thread

    run(scenario())
    assert guarded.overlaps == 0


async def _until(check: object, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _in_flight(engine: EmbeddingEngine) -> object:
    return engine.workers(MODEL)[0]["in_flight"]


def _rows_run_by(controls: Controls, pid: object) -> list[int]:
    """The size of each batch the worker process `pid` ran, in order."""
    return [len(b["rows"]) for b in controls.batches() if b["pid"] == pid]  # type: ignore[arg-type]


def _timed_engine(
    tmp: Path, forward: float, device: str, devices: int = 1
) -> tuple[EmbeddingEngine, Controls]:
    """Process workers whose forwards take `forward` seconds, with no wait for company."""
    return make_engine(tmp, "process", device=device, devices=devices, forward=forward, max_batch_wait_ms=0)


def test_a_worker_is_handed_its_next_batch_once_the_clients_are_back(tmp_path: Path) -> None:
    """Lock-step clients, a worker on an accelerator: once as many requests are queued as the
    batch in the worker serves, they go into its pipe while it runs, so it starts them the
    moment it is done, not after its reply has crossed the gateway. While fewer are back,
    the rest may still join them."""
    forward = 0.6
    engine, controls = _timed_engine(tmp_path, forward, "cuda:0")

    def in_flight() -> object:
        return _in_flight(engine)

    async def scenario() -> None:
        first = asyncio.ensure_future(engine.embed(MODEL, "first"))
        await _until(lambda: in_flight() == 1)
        # One request back, as many as the batch in the worker serves: into the pipe now.
        second = asyncio.ensure_future(engine.embed(MODEL, "second"))
        await _until(lambda: in_flight() == 2, forward / 2)
        pair = [asyncio.ensure_future(engine.embed(MODEL, f"pair {i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        assert in_flight() == 2  # PIPELINE: no third batch
        await first
        # Two back for the one that "second" serves: piped behind it.
        await _until(lambda: in_flight() == 2, forward / 2)
        last = asyncio.ensure_future(engine.embed(MODEL, "last"))
        await second
        # "pair" now runs and served two requests; one is back: it waits in the gateway,
        # where a request arriving now could still join it.
        await asyncio.sleep(forward / 3)
        assert not any(p.done() for p in pair)
        assert in_flight() == 1
        await asyncio.gather(*pair, last)

    pid = engine.workers(MODEL)[0]["pid"]
    try:
        run(scenario())
    finally:
        engine.stop()
    # (The Batch API's background worker warms up on the same controls meanwhile.)
    assert _rows_run_by(controls, pid) == [1, 1, 2, 1]


async def _second_while_first_runs(engine: EmbeddingEngine, forward: float, piped: bool) -> None:
    """A request arrives while a one-request batch runs: it goes into the worker's pipe at
    once (`piped`), or waits in the gateway until the worker is done."""
    first = asyncio.ensure_future(engine.embed(MODEL, "first"))
    await _until(lambda: _in_flight(engine) == 1)
    second = asyncio.ensure_future(engine.embed(MODEL, "second"))
    if piped:
        await _until(lambda: _in_flight(engine) == 2, forward / 2)
    else:
        await asyncio.sleep(forward / 3)
        assert _in_flight(engine) == 1
    assert not first.done()
    await asyncio.gather(first, second)


def test_a_request_queued_behind_a_batch_waits_for_its_client_when_one_forward_for_both_pays(
    tmp_path: Path,
) -> None:
    """A worker on an accelerator whose forwards have a large fixed cost, and clients that come
    back at once: a request that arrives while a batch runs is not sent on into the pipe; it
    waits for the running batch's client to come back, and one forward serves both
    (app.engine.pipelining)."""
    fixed = 0.3
    engine, controls = make_engine(
        tmp_path, "process", device="cuda:0", forward=(fixed, 0.001), max_batch_wait_ms=250
    )
    pid = engine.workers(MODEL)[0]["pid"]

    async def scenario() -> None:
        # Forwards of several sizes, for the engine to fit their fixed cost, and each client
        # back the moment it has its answer, for it to learn how soon clients come back.
        for text in ("a", "a longer text with a good many more words", "b", "another text of many words"):
            await engine.embed(MODEL, text)
        first = asyncio.ensure_future(engine.embed(MODEL, "first"))
        await _until(lambda: _in_flight(engine) == 1)
        second = asyncio.ensure_future(engine.embed(MODEL, "second"))
        await asyncio.sleep(fixed / 2)
        assert _in_flight(engine) == 1 and not first.done()  # held in the gateway
        await first
        back = asyncio.ensure_future(engine.embed(MODEL, "first, back"))
        await asyncio.gather(second, back)

    try:
        run(scenario())
    finally:
        engine.stop()
    assert _rows_run_by(controls, pid)[-2:] == [1, 2]


def test_a_cpu_worker_sharing_the_gateways_cores_gets_its_next_batch_when_done(tmp_path: Path) -> None:
    """Its forward would compete with the gateway settling the last one's requests."""
    forward = 0.6
    engine, controls = _timed_engine(tmp_path, forward, "cpu")
    pid = engine.workers(MODEL)[0]["pid"]
    try:
        run(_second_while_first_runs(engine, forward, piped=False))
    finally:
        engine.stop()
    assert _rows_run_by(controls, pid) == [1, 1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning apart needs two cores")
def test_a_cpu_worker_pinned_to_cores_of_its_own_gets_its_next_batch_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "APART_RECHECK_SECONDS", 0.0)
    forward = 0.6
    engine, _ = _timed_engine(tmp_path, forward, "cpu")
    cores = sorted(os.sched_getaffinity(0))
    worker = engine.workers(MODEL)[0]["pid"]
    assert isinstance(worker, int)
    before = os.sched_getaffinity(os.getpid())  # this process's main thread: the gateway's
    try:
        assert not host.forwards_apart("cpu", worker)
        os.sched_setaffinity(worker, cores[-1:])
        os.sched_setaffinity(os.getpid(), cores[:-1])
        assert host.forwards_apart("cpu", worker)
        run(_second_while_first_runs(engine, forward, piped=True))
    finally:
        os.sched_setaffinity(os.getpid(), before)
        engine.stop()


def test_a_batch_goes_to_an_idle_worker_never_into_a_busy_ones_pipe(tmp_path: Path) -> None:
    engine, controls = _timed_engine(tmp_path, 0.4, "cuda", devices=2)

    def flights() -> list[object]:
        return sorted(w["in_flight"] for w in engine.workers(MODEL) if w["lane"] == "interactive")  # type: ignore[type-var]

    async def scenario() -> None:
        for round_ in range(4):
            first = asyncio.ensure_future(engine.embed(MODEL, f"first {round_}"))
            await _until(lambda: flights() == [0, 1])
            second = asyncio.ensure_future(engine.embed(MODEL, f"second {round_}"))
            await _until(lambda: sum(flights()) == 2)  # type: ignore[arg-type]
            assert flights() == [1, 1]
            await asyncio.gather(first, second)

    pids = {w["pid"] for w in engine.workers(MODEL) if w["lane"] == "interactive"}
    try:
        run(scenario())
    finally:
        engine.stop()
    assert {b["pid"] for b in controls.batches() if b["pid"] in pids} == pids
