"""The serving engine under concurrency, through a real server and real MiniLM weights in a
worker process.

The shared test backend (tests.fake_backend) wraps the real model part in the worker: a
gate the test closes holds the worker still, so that what queues up while it is busy is
known exactly; it also records every batch the model really ran.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from app.config import EngineSettings
from app.models.registry import load_tokenizer
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.fake_backend import Controls, FakeLoader
from tests.serving import Gateway, run_gateway

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
POISON = "poison pill text"
MAX_BATCH_TOKENS = 256


@dataclass
class Rig:
    gateway: Gateway
    controls: Controls

    def __post_init__(self) -> None:
        self._tokenizer = load_tokenizer(settings_with().models[0])

    def ids(self, text: str) -> tuple[int, ...]:
        return self._tokenizer.tokenize([text], "")[0].input_ids

    def batches(self) -> list[list[tuple[int, ...]]]:
        return [[tuple(row) for row in b["rows"]] for b in self.controls.batches()]  # type: ignore[union-attr]

    def seen(self) -> set[tuple[int, ...]]:
        return {ids for batch in self.batches() for ids in batch}

    def hold(self) -> None:
        """Close the gate and wait until the worker is stuck on a batch."""
        self.controls.close_gate()
        threading.Thread(target=self.post, args=({"input": "hold the model thread"},), daemon=True).start()
        assert self.controls.wait_entered(10)

    def post(self, body: dict[str, object], timeout: float = 30) -> httpx.Response:
        payload = {"model": MINILM, "encoding_format": "float", **body}
        return httpx.post(f"{self.gateway.v1}/embeddings", headers=AUTH, json=payload, timeout=timeout)


@contextmanager
def _rig(engine: EngineSettings, tmp: Path, memory_rows: int = 0) -> Iterator[Rig]:
    loader = FakeLoader(str(tmp))
    with run_gateway(settings_with(engine=engine), key=TEST_KEY, loader=loader) as gateway:
        rig = Rig(gateway, loader.controls(MINILM))
        rig.controls.set("poison", [list(rig.ids(POISON))])
        rig.controls.forget_batches()  # forget the warm-up
        if memory_rows:
            rig.controls.set("memory_rows", memory_rows)
        yield rig


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    engine = EngineSettings(max_batch_size=8, max_batch_tokens=MAX_BATCH_TOKENS, max_queue_requests=64)
    with _rig(engine, tmp_path_factory.mktemp("rig")) as rig:
        yield rig


@pytest.fixture(autouse=True)
def _open_gate(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "rig" in request.fixturenames:
        request.getfixturevalue("rig").controls.open_gate()


async def _concurrently(rig: Rig, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=rig.gateway.v1, headers=AUTH, timeout=30) as client:
        posts = [
            client.post("/embeddings", json={"model": MINILM, "encoding_format": "float", **b})
            for b in bodies
        ]
        return await asyncio.gather(*posts)


def _texts(n: int) -> list[str]:
    return [f"sentence number {i} about topic {i * 7 % 13}" for i in range(n)]


def test_concurrent_requests_share_batches_within_the_budget(rig: Rig) -> None:
    texts = _texts(24)
    rig.hold()

    async def run() -> list[httpx.Response]:
        pending = asyncio.ensure_future(_concurrently(rig, [{"input": t} for t in texts]))
        await asyncio.sleep(1.0)  # all 24 requests are queued behind the held batch
        rig.controls.open_gate()
        return await pending

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 24
    wanted = {rig.ids(t) for t in texts}
    batches = [b for b in rig.batches() if wanted & set(b)]
    # 24 single-input requests ran in a few full batches, not 24 forward passes.
    assert max(len(b) for b in batches) == 8
    assert len(batches) <= 4
    for batch in rig.batches():
        assert len(batch) == 1 or max(map(len, batch)) * len(batch) <= MAX_BATCH_TOKENS


def test_batched_results_equal_unbatched(rig: Rig) -> None:
    texts = _texts(12)
    alone = [rig.post({"input": t}).json()["data"][0]["embedding"] for t in texts]
    together = asyncio.run(_concurrently(rig, [{"input": t} for t in texts]))
    mixed = rig.post({"input": texts}).json()["data"]
    for i, vector in enumerate(alone):
        for other in (together[i].json()["data"][0]["embedding"], mixed[i]["embedding"]):
            cosine = np.dot(vector, other) / (np.linalg.norm(vector) * np.linalg.norm(other))
            assert cosine >= 0.99999


def test_identical_inputs_in_a_batch_run_once_and_are_counted_each_time(rig: Rig) -> None:
    rig.controls.forget_batches()
    one = rig.post({"input": "the same text"}).json()
    response = rig.post({"input": ["the same text"] * 5}).json()
    assert response["usage"]["prompt_tokens"] == 5 * one["usage"]["prompt_tokens"]
    # (Only its batches: the Batch API's worker, loading after /ready, records a warm-up batch.)
    assert [len(b) for b in rig.batches() if rig.ids("the same text") in b] == [1, 1]
    assert all(d["embedding"] == one["data"][0]["embedding"] for d in response["data"])


def test_a_failing_batch_fails_only_its_own_requests(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.hold()

    async def run() -> list[httpx.Response]:
        # Two short inputs share a batch; a long one is too wide to join it (budget 256).
        pending = asyncio.ensure_future(
            _concurrently(
                rig, [{"input": POISON}, {"input": "an innocent bystander"}, {"input": "long " * 200}]
            )
        )
        await asyncio.sleep(0.5)
        rig.controls.open_gate()
        return await pending

    poisoned, bystander, separate = asyncio.run(run())
    assert poisoned.status_code == 500 and bystander.status_code == 500
    assert poisoned.json()["error"]["type"] == "server_error"
    assert "forward pass" not in poisoned.text  # no internals in the body
    assert separate.status_code == 200
    assert rig.post({"input": "the next request"}).status_code == 200
    assert "a batch of 2 inputs failed" in caplog.text


def test_a_disconnected_clients_inputs_never_reach_the_model(rig: Rig) -> None:
    rig.hold()
    gone = "this client hangs up before its turn"
    body = msgspec.json.encode({"model": MINILM, "input": gone})
    host, port = rig.gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TEST_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.5)  # queued behind the held batch
    # The socket is closed: the gateway drops the queued input.
    deadline = time.monotonic() + 5
    while rig.gateway.engine.queue_depth()[MINILM][0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.gateway.engine.queue_depth()[MINILM] == (0, 0)  # dropped from the queue itself
    rig.controls.open_gate()
    assert rig.post({"input": "a later request"}).status_code == 200
    assert rig.ids(gone) not in rig.seen()
    assert rig.ids("a later request") in rig.seen()


def test_a_full_queue_answers_503_with_retry_after_at_once(tmp_path: Path) -> None:
    with _rig(EngineSettings(max_queue_requests=2), tmp_path) as rig:
        rig.hold()  # one admitted request
        waiting = threading.Thread(target=rig.post, args=({"input": "second, admitted"},), daemon=True)
        waiting.start()
        time.sleep(0.5)
        started = time.perf_counter()
        refused = rig.post({"input": "third, refused"}, timeout=5)
        elapsed = time.perf_counter() - started
        rig.controls.open_gate()
        waiting.join(10)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        message = refused.json()["error"]["message"]
        assert message == "The engine is currently overloaded, please try again later."
        assert elapsed < 1.0
        assert rig.post({"input": "served again"}).status_code == 200


def test_out_of_memory_splits_the_batch_and_still_answers(tmp_path: Path) -> None:
    with _rig(EngineSettings(max_batch_size=16), tmp_path, memory_rows=3) as rig:
        texts = _texts(10)
        response = rig.post({"input": texts})
        assert response.status_code == 200
        assert all(len(b) <= 3 for b in rig.batches())
        alone = rig.post({"input": texts[7]}).json()["data"][0]["embedding"]
        np.testing.assert_allclose(response.json()["data"][7]["embedding"], alone, atol=1e-5)


def test_a_dead_model_thread_is_reported_and_fails_waiters(tmp_path: Path) -> None:
    with _rig(EngineSettings(workers="thread"), tmp_path) as rig:
        rig.controls.set("kill", [list(rig.ids("this kills the model thread"))])
        response = rig.post({"input": "this kills the model thread"}, timeout=10)
        assert response.status_code == 500
        ready = httpx.get(f"{rig.gateway.url}/ready")
        assert ready.status_code == 503
        assert "model thread died" in ready.json()["models"][MINILM]
        after = rig.post({"input": "after the crash"}, timeout=10)
        assert after.status_code == 503 and after.json()["error"]["type"] == "server_error"


def test_health_is_fast_while_the_model_is_busy(rig: Rig) -> None:
    rig.hold()
    pending = threading.Thread(target=rig.post, args=({"input": _texts(64)},), daemon=True)
    pending.start()
    started = time.perf_counter()
    assert httpx.get(f"{rig.gateway.url}/health").status_code == 200
    assert time.perf_counter() - started < 1.0
    rig.controls.open_gate()
    pending.join(30)
