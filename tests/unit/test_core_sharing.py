"""Forwards leave the gateway a core while it has CPU-heavy work in hand and interactive
requests are about (app.engine.gateway_load): through the engine and a real worker process
running torch with two threads, on the shared fake backend (which records each forward's
torch threads). Plus the pieces on their own: the message field and the thread switch."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import torch

from app.engine.gateway_load import RECENT_S
from app.engine.pacing import INTERACTIVE_WINDOW_S
from app.engine.workers import channel
from app.models.protocol import TokenizedText
from app.models.torch_runtime import ThreadShare
from tests.unit.test_fair_batching import MODEL, _engine, _long


def _threads_of_last_forward(controls: object) -> int:
    return controls.batches()[-1]["threads"]  # type: ignore[attr-defined, no-any-return]


def test_a_worker_leaves_a_core_only_while_the_gateway_is_busy_and_queries_are_about(
    tmp_path: Path,
) -> None:
    # 5 ms + 20 us per padded token: a 30 ms forward is about 1,250 tokens, so 100 texts of
    # 32 tokens are bulk and a one-line request is interactive (app.engine.pacing).
    engine, controls = _engine(
        tmp_path,
        forward_seconds=(0.005, 20e-6),
        workers="process",
        torch_threads=2,
        max_batch_size=64,
        max_batch_tokens=2048,
    )
    bulk = [_long("bulk", i) for i in range(100)]

    async def one(text: str | list[str]) -> int:
        await engine.embed(MODEL, text)
        return _threads_of_last_forward(controls)

    try:
        # The model's speed, from full batches: until then every request counts as interactive.
        asyncio.run(one([_long("speed", i) for i in range(128)]))
        time.sleep(INTERACTIVE_WINDOW_S + 0.1)
        # Bulk work alone, while the gateway is busy: every thread (throughput is what counts).
        with engine.load.working():
            assert asyncio.run(one(bulk)) == 2
        time.sleep(RECENT_S + 0.1)
        # A query with the gateway idle: every thread.
        assert asyncio.run(one("a query")) == 2
        # A query while the gateway has heavy work in hand: one thread left to it.
        with engine.load.working():
            assert asyncio.run(one("a query")) == 1
        # ... and for a moment after, since such work comes in runs.
        assert asyncio.run(one("a query")) == 1
        time.sleep(RECENT_S + 0.1)
        assert asyncio.run(one("a query")) == 2
    finally:
        engine.stop()


def test_tokenizing_on_the_tokenizer_thread_counts_as_heavy_work(tmp_path: Path) -> None:
    engine, controls = _engine(tmp_path, workers="process", torch_threads=2)
    seen: list[int] = []

    async def scenario() -> None:
        await engine.embed(MODEL, "a query")  # interactive requests are about
        # 40 inputs: tokenized on the tokenizer thread (a query-sized request is not).
        await engine.embed(MODEL, [f"text {i}" for i in range(40)])
        seen.append(_threads_of_last_forward(controls))

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()
    assert seen == [1]
    assert engine.load.busy == 0


def test_the_batch_message_carries_the_cores_to_spare() -> None:
    rows = [TokenizedText((1, 2, 3), 3, 3), TokenizedText((4,), 1, 1)]
    decoded = channel.decode_batch(channel.encode_batch(7, rows, spare=1))
    assert decoded == (7, rows, 1)
    assert channel.decode_batch(channel.encode_batch(8, rows)).spare == 0


def test_thread_share_switches_torch_threads_and_back() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        share = ThreadShare()
        share.leave(1)
        assert torch.get_num_threads() == 1
        share.leave(5)  # never below one thread
        assert torch.get_num_threads() == 1
        share.leave(0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
