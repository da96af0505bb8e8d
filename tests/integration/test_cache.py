"""The embedding cache: in memory and in a real redis-server, through the engine and over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import msgspec
import numpy as np
import pytest

from app.config import Alias, CacheSettings, Settings
from app.engine.engine import EmbeddingEngine, EmbeddingResult
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.redis_server import RedisServer
from tests.serving import Gateway, run_gateway

ALIAS = "minilm-again"  # the same weights and instruction under another served name


class Recorder:
    def __init__(self) -> None:
        self.batches = 0
        self.hits = 0
        self.misses = 0

    def on_batch(self, model: str, size: int, padded_tokens: int, seconds: float) -> None:
        self.batches += 1

    def on_queue_depth(self, model: str, requests: int, tokens: int) -> None:
        pass

    def on_cache(self, model: str, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses

    def on_batching_costs(
        self, model: str, fixed_seconds: float | None, return_seconds: float | None
    ) -> None:
        pass


def cached_settings(storage: str = "memory") -> Settings:
    base = settings_with(cache=CacheSettings(enabled=True, storage=storage, timeout_seconds=0.2))
    entry = msgspec.structs.replace(base.models[0], aliases=[Alias(name=ALIAS)])
    return msgspec.structs.replace(base, models=[entry])


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with run_gateway(cached_settings(), key=TEST_KEY) as running:
        yield running


def _post(gateway: Gateway, body: dict[str, object]) -> dict[str, object]:
    response = httpx.post(f"{gateway.v1}/embeddings", headers=gateway.headers(), json=body, timeout=60)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_a_hit_returns_the_same_bytes_and_counts_usage(gateway: Gateway) -> None:
    body = {"model": MINILM, "input": ["cached text one", "cached text two"], "encoding_format": "base64"}
    first, second = _post(gateway, body), _post(gateway, body)
    assert first["data"] == second["data"]
    assert first["usage"] == second["usage"] and first["usage"]["prompt_tokens"] > 0  # type: ignore[index]
    # Mixed: one row from the cache, one computed, in the right places.
    mixed = _post(gateway, {**body, "input": ["new text", "cached text two"]})
    assert mixed["data"][1] == first["data"][1]  # type: ignore[index]
    assert mixed["data"][0]["embedding"] != first["data"][0]["embedding"]  # type: ignore[index]


def _run(settings: Settings, work: object) -> tuple[Recorder, list[EmbeddingResult]]:
    recorder = Recorder()
    engine = EmbeddingEngine(settings, observer=recorder)
    engine.start()
    engine.wait_loaded(120)
    assert engine.ready, engine.status()

    async def go() -> list[EmbeddingResult]:
        try:
            return [await call(engine) for call in work]  # type: ignore[attr-defined]
        finally:
            await engine.close_cache()

    try:
        return recorder, asyncio.run(go())
    finally:
        engine.stop()


def test_hits_skip_the_model_and_other_names_or_instructions_miss() -> None:
    text = "the same words each time"
    recorder, results = _run(
        cached_settings(),
        [
            lambda e: e.embed(MINILM, text),
            lambda e: e.embed(MINILM, text),
            lambda e: e.embed(ALIAS, text),
            lambda e: e.embed(MINILM, text, instruction="query: "),
            lambda e: e.embed(MINILM, text, dimensions=8),
        ],
    )
    batches_after = recorder.batches
    assert (recorder.hits, recorder.misses) == (2, 3)
    assert batches_after == 3  # the three misses only
    np.testing.assert_array_equal(results[0].vectors, results[1].vectors)
    assert results[0].prompt_tokens == results[1].prompt_tokens
    assert results[3].prompt_tokens > results[0].prompt_tokens
    # A hit is the raw vector: dimensions and normalisation still apply to it.
    cut = results[0].vectors[0, :8] / np.linalg.norm(results[0].vectors[0, :8])
    np.testing.assert_allclose(results[4].vectors[0], cut, atol=1e-6)


def test_redis_is_shared_and_a_dead_redis_only_means_misses(redis_server: RedisServer) -> None:
    settings = cached_settings(redis_server.url)
    text = "shared between replicas"
    first, _ = _run(settings, [lambda e: e.embed(MINILM, text)])
    assert (first.hits, first.misses) == (0, 1)
    # Another engine (a replica) finds what the first one stored.
    replica, results = _run(settings, [lambda e: e.embed(MINILM, text)])
    assert (replica.hits, replica.misses) == (1, 0)
    redis_server.stop()
    started = time.monotonic()
    down, served = _run(
        settings, [lambda e: e.embed(MINILM, text), lambda e: e.embed(MINILM, "another text")]
    )
    assert time.monotonic() - started < 60
    assert (down.hits, down.misses) == (0, 2)
    np.testing.assert_allclose(served[0].vectors, results[0].vectors, atol=1e-6)


def test_a_dead_redis_never_fails_a_request(redis_server: RedisServer) -> None:
    redis_server.stop()
    with run_gateway(cached_settings(redis_server.url), key=TEST_KEY) as gateway:
        started = time.monotonic()
        for i in range(5):
            _post(gateway, {"model": MINILM, "input": f"text {i}"})
        # The first failure is bounded by timeout_seconds; then Redis is skipped for a second.
        assert time.monotonic() - started < 10
