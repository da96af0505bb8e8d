"""Fairness and pacing through the engine (no HTTP), on the shared fake backend: a small
request does not wait behind a big one's rows, and forwards stay near the time target while
small requests are about, the full budget otherwise."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from app.config import EngineSettings, ModelSettings
from app.engine.engine import EmbeddingEngine
from tests.fake_backend import Controls, FakeLoader, start_engine, wait_for_workers

MODEL = "fake"
WIDTH = 32  # max_length: a text of WIDTH words or more is WIDTH tokens


def _engine(
    tmp: Path, forward_seconds: tuple[float, float] = (0.0, 0.0), **engine: object
) -> tuple[EmbeddingEngine, Controls]:
    return start_engine(
        tmp,
        EngineSettings(**{"workers": "thread", "max_batch_wait_ms": 0, **engine}),  # type: ignore[arg-type]
        ModelSettings(name=MODEL, base_model="fake", max_length=WIDTH, device="cpu"),
        dimensions=4,
        forward_seconds=forward_seconds,
    )


def _long(tag: str, i: int) -> str:
    """A distinct text of WIDTH tokens (each digit its own word: the fake tokenizer hashes words)."""
    return f"{tag} a{i // 1000} b{i // 100 % 10} c{i // 10 % 10} d{i % 10} " + " ".join(
        f"w{j}" for j in range(WIDTH)
    )


@pytest.fixture(params=[(2000, 0.1), (100, 0.3)], ids=["soon", "after-max-unserved"])
def small_batches(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[EmbeddingEngine, Controls, float]]:
    """(max_unserved_ms, how long the big request's first batch is held)"""
    max_unserved_ms, hold = request.param
    engine, controls = _engine(tmp_path, max_batch_size=4, max_unserved_ms=max_unserved_ms)
    yield engine, controls, hold
    controls.open_gate()
    engine.stop()


def test_a_one_text_request_overtakes_the_rows_of_a_big_request(
    small_batches: tuple[EmbeddingEngine, Controls, float],
) -> None:
    # Also when the big request's first forward outlasts max_unserved_ms: a request with an
    # input in the forward in progress is not starving.
    engine, controls, hold = small_batches
    finished: list[str] = []

    async def scenario() -> None:
        async def embed(name: str, texts: list[str]) -> None:
            await engine.embed(MODEL, texts)
            finished.append(name)

        controls.close_gate()
        big = asyncio.ensure_future(embed("big", [_long("big", i) for i in range(40)]))
        assert await asyncio.to_thread(controls.wait_entered)  # its first 4 rows are running
        small = asyncio.ensure_future(embed("small", ["one short text"]))
        await asyncio.sleep(hold)
        controls.open_gate()
        await asyncio.gather(big, small)

    asyncio.run(scenario())
    assert finished == ["small", "big"]
    batches = [b["rows"] for b in controls.batches()]
    assert len(batches) == 11  # 40 rows of 4, plus the small request's
    small_at = [i for i, rows in enumerate(batches) if any(len(r) < WIDTH for r in rows)]  # type: ignore[union-attr]
    assert small_at == [1]  # the very next forward, not after the 36 rows left


def test_forwards_are_paced_while_small_requests_are_about(tmp_path: Path) -> None:
    # A forward costs 5 ms plus 20 us per padded token: the full budget (64 x 32 tokens)
    # about 46 ms; a 25 ms target is about 1000 tokens, 31 rows.
    engine, controls = _engine(
        tmp_path, forward_seconds=(0.005, 20e-6), max_batch_size=64, max_batch_tokens=2048, max_batch_ms=25
    )

    async def bulk_alone() -> None:
        await engine.embed(MODEL, [_long("bulk", i) for i in range(640)])

    async def bulk_with_small_requests() -> None:
        big = asyncio.ensure_future(engine.embed(MODEL, [_long("mixed", i) for i in range(1280)]))
        while not big.done():
            await engine.embed(MODEL, "a small request")
            await asyncio.sleep(0.02)
        await big

    try:
        asyncio.run(bulk_alone())
        alone = [len(b["rows"]) for b in controls.batches()]  # type: ignore[arg-type]
        controls.forget_batches()
        asyncio.run(bulk_with_small_requests())
        mixed = [len(b["rows"]) for b in controls.batches()]  # type: ignore[arg-type]
    finally:
        engine.stop()
    assert alone == [64] * 10  # pure bulk: the whole token budget every time
    assert 16 <= statistics.median(mixed) <= 40, mixed


def test_small_requests_alone_still_share_full_batches_while_paced(tmp_path: Path) -> None:
    # The same model; 64 one-text requests queued together (as c=64 clients would) fill one
    # full batch of 2048 tokens, although a paced forward would take about 1000.
    engine, controls = _engine(
        tmp_path, forward_seconds=(0.005, 20e-6), max_batch_size=64, max_batch_tokens=2048, max_batch_ms=25
    )

    async def scenario() -> None:
        controls.close_gate()
        first = asyncio.ensure_future(engine.embed(MODEL, "a small request"))
        assert await asyncio.to_thread(controls.wait_entered)
        rest = [asyncio.ensure_future(engine.embed(MODEL, _long("small", i))) for i in range(64)]
        await asyncio.sleep(0.2)
        controls.open_gate()
        await asyncio.gather(first, *rest)

    try:
        asyncio.run(scenario())
    finally:
        controls.open_gate()
        engine.stop()
    assert [len(b["rows"]) for b in controls.batches()] == [1, 64]  # type: ignore[arg-type]


def test_a_short_request_is_not_padded_to_a_long_ones_length_once_the_cost_is_known(
    tmp_path: Path,
) -> None:
    # 10 ms per forward plus 0.5 ms per padded token: 20 padded tokens cost a forward's
    # fixed cost. A 2-token query and a 32-token text queued together then go into two
    # forwards (10 + 1 ms and 10 + 16 ms) rather than one of 2 x 32 tokens (42 ms).
    engine, controls = _engine(tmp_path, forward_seconds=(0.01, 0.0005), max_batch_ms=0)

    async def scenario() -> None:
        for i in range(4):  # forwards of two sizes: enough to fit the line
            await engine.embed(MODEL, "warm")
            await engine.embed(MODEL, _long("warm", i))
        controls.forget_batches()
        # A forward of 8 x 32 tokens (138 ms) is running while the three are queued. (Not the
        # gate: a forward held there would look slow to the cost model.)
        first = asyncio.ensure_future(engine.embed(MODEL, [_long("bulk", i) for i in range(8)]))
        await asyncio.sleep(0.03)
        long = asyncio.ensure_future(engine.embed(MODEL, _long("doc", 0)))
        short = asyncio.ensure_future(engine.embed(MODEL, "query"))
        similar = asyncio.ensure_future(engine.embed(MODEL, "another query"))
        await asyncio.gather(first, long, short, similar)

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()
    assert len(controls.batches()[0]["rows"]) == 8  # type: ignore[arg-type]
    widths = sorted(sorted(len(r) for r in b["rows"]) for b in controls.batches()[1:])  # type: ignore[union-attr]
    assert widths == [[2, 3], [WIDTH]]  # the two queries share one forward, the document has its own


@pytest.mark.parametrize("devices", [2, "auto"])
def test_with_two_cpu_workers_one_is_kept_for_queries_while_bulk_is_paced(
    tmp_path: Path, devices: int | Literal["auto"]
) -> None:
    # As the pacing test above, on two worker processes. Bulk alone runs on both; while
    # small requests are about, the second worker runs only batches seeded by one of them,
    # so a query never waits for a bulk forward to end.
    from app.config import BatchSettings

    engine, controls = start_engine(
        tmp_path,
        EngineSettings(
            workers="process", max_batch_wait_ms=0, max_batch_size=64, max_batch_tokens=2048, max_batch_ms=25
        ),
        ModelSettings(name=MODEL, base_model="fake", max_length=WIDTH, device="cpu", devices=devices),
        batch=BatchSettings(enabled=False),
        dimensions=4,
        forward_seconds=(0.005, 20e-6),
    )
    # "auto": the second worker joins once the first is up (this host has the cores and
    # memory for it; tests/unit/test_auto_workers.py).
    wait_for_workers(engine, MODEL, 2)

    async def bulk_alone() -> None:
        await asyncio.gather(
            *(engine.embed(MODEL, [_long(f"bulk{k}", i) for i in range(256)]) for k in range(4))
        )

    async def bulk_with_small_requests() -> int:
        big = asyncio.ensure_future(engine.embed(MODEL, [_long("mixed", i) for i in range(2000)]))
        served = 0
        while not big.done():
            await engine.embed(MODEL, f"a small request {served}")
            served += 1
            await asyncio.sleep(0.02)
        await big
        return served

    def forwards() -> list[tuple[int, int]]:
        """(pid, longest row) of each forward, in the order they started."""
        return [(int(b["pid"]), max(len(r) for r in b["rows"])) for b in controls.batches()]  # type: ignore[arg-type, union-attr]

    try:
        first, second = (int(w["pid"]) for w in engine.workers(MODEL))  # type: ignore[call-overload]
        controls.forget_batches()
        asyncio.run(bulk_alone())
        alone = forwards()
        controls.forget_batches()
        served = asyncio.run(bulk_with_small_requests())
        mixed = forwards()
    finally:
        engine.stop()
    assert {pid for pid, _ in alone} == {first, second}  # pure bulk: both workers
    assert served >= 5
    # Pacing starts with the first query (the bulk rows taken before it may still be in
    # the kept worker's pipe): from the third query's forward on, the kept worker runs only
    # queries, and the other one the bulk rows.
    queries = [i for i, (_, longest) in enumerate(mixed) if longest < WIDTH]
    later = mixed[queries[2] :]
    kept = [longest for pid, longest in later if pid == second]
    assert kept and all(longest < WIDTH for longest in kept), later
    assert any(longest == WIDTH for pid, longest in later if pid == first)


def test_the_worker_kept_for_queries_takes_bulk_work_while_no_other_serves(tmp_path: Path) -> None:
    # With the others down (restarting, or given up), keeping it for queries would starve
    # bulk work for as long as queries come.
    from app.engine.batcher import Batcher
    from app.engine.observer import NullObserver
    from app.engine.workers.pool import ModelPool
    from app.engine.workers.process import ProcessWorker

    entry = ModelSettings(name=MODEL, base_model="fake", max_length=WIDTH, device="cpu", devices=3)
    batcher = Batcher(
        MODEL, max_batch_size=8, max_batch_tokens=256, max_queue_tokens=10_000, observer=NullObserver()
    )
    pool = ModelPool(
        entry, batcher, FakeLoader(str(tmp_path), real=False), kind="process", threads=1, warmup=[]
    )
    *others, kept = pool.workers
    assert isinstance(kept, ProcessWorker)
    assert all(isinstance(w, ProcessWorker) and not w.keep_for_queries() for w in others)
    assert not kept.keep_for_queries()  # nothing started: no other worker serves
    others[1]._serving = True  # type: ignore[union-attr]
    assert kept.keep_for_queries()
