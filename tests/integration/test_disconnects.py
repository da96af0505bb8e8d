"""A client that hangs up is logged and counted as 499, never 500 and never with a traceback:
while its body is still being read, while its request is queued, or while its batch runs.

Raw sockets against real servers: an in-thread gateway whose model thread a gate holds still
(so where each request is when its client leaves is known), and a subprocess gateway for a
bounded storm of bulk clients that leave after 50 ms, whose whole output is then read."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from app.config import MetricsSettings
from app.models.registry import load_tokenizer
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.fake_backend import Controls, FakeLoader
from tests.integration.test_metrics import samples, value
from tests.processes import gateway_processes
from tests.serving import Gateway, free_port, run_gateway


@dataclass
class Rig:
    gateway: Gateway
    controls: Controls
    metrics_url: str

    def counted(self, status: str) -> float:
        return _counted(httpx.get(self.metrics_url, timeout=10).text, status)


def _counted(exposition: str, status: str) -> float:
    """gateway_requests_total for one status, whatever the model label (empty before parsing)."""
    found = samples(exposition)
    return sum(
        value(found, "gateway_requests_total", model=model, key="env", status=status)
        for model in ("", MINILM)
    )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """MiniLM in a worker process whose forward passes wait at the shared test gate."""
    loader = FakeLoader(str(tmp_path_factory.mktemp("controls")))
    port = free_port()
    settings = settings_with(metrics=MetricsSettings(enabled=True, port=port))
    with run_gateway(settings, key=TEST_KEY, loader=loader) as gateway:
        controls = loader.controls(MINILM)
        yield Rig(gateway, controls, f"http://127.0.0.1:{port}/metrics")
        controls.open_gate()


def _head(body_length: int, request_id: str) -> bytes:
    return (
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TEST_KEY}\r\nx-request-id: {request_id}\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


def _body(texts: str | list[str]) -> bytes:
    return msgspec.json.encode({"model": MINILM, "input": texts})


def _request_line(caplog: pytest.LogCaptureFixture, request_id: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if r.name == "app.requests"]
        found = [line for line in lines if f"request_id={request_id} " in line]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no request line for {request_id}")


def _no_failure_logged(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def _leave(url: str, head: bytes, body: bytes, *, then: Callable[[], bool] | None = None) -> None:
    """Send `head` and `body`, wait until `then()` (or 50 ms), and hang up without reading."""
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + body)
    await writer.drain()
    if then is None:
        await asyncio.sleep(0.05)
    else:
        while not then():
            await asyncio.sleep(0.02)
    writer.close()
    await writer.wait_closed()


def test_leaving_while_the_body_is_read_is_499(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    before = rig.counted("499")
    body = _body("a body that never arrives in full")
    with caplog.at_level(logging.INFO):
        asyncio.run(_leave(rig.gateway.url, _head(len(body), "slow-body"), body[: len(body) // 2]))
        line = _request_line(caplog, "slow-body")
    assert " status=499 " in line, line
    _no_failure_logged(caplog)
    _wait_for(lambda: rig.counted("499") == before + 1)


def test_leaving_while_queued_is_499_and_never_reaches_the_model(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.controls.close_gate()
    holder = threading.Thread(
        target=httpx.post,
        args=(f"{rig.gateway.v1}/embeddings",),
        kwargs={"headers": rig.gateway.headers(), "json": {"model": MINILM, "input": "hold"}, "timeout": 30},
    )
    holder.start()
    assert rig.controls.wait_entered(10)
    before = rig.counted("499")
    queued_text = "queued behind the held batch, then abandoned"
    body = _body(queued_text)
    try:
        with caplog.at_level(logging.INFO):

            def queued() -> bool:
                return rig.gateway.engine.queue_depth()[MINILM][0] > 0

            asyncio.run(_leave(rig.gateway.url, _head(len(body), "left-queued"), body, then=queued))
            line = _request_line(caplog, "left-queued")
            assert " status=499 " in line, line
            # Dropped from the queue while the model is still busy with the other batch.
            assert rig.gateway.engine.queue_depth()[MINILM] == (0, 0)
    finally:
        rig.controls.open_gate()
        holder.join(30)
    ids = list(load_tokenizer(settings_with().models[0]).tokenize([queued_text], "")[0].input_ids)
    assert all(ids not in batch["rows"] for batch in rig.controls.batches())  # type: ignore[operator]
    _no_failure_logged(caplog)
    _wait_for(lambda: rig.counted("499") == before + 1)


def test_leaving_while_the_batch_runs_is_499_at_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.controls.close_gate()
    before = rig.counted("499")
    body = _body(["a batch that runs", "while its client leaves"])
    try:
        with caplog.at_level(logging.INFO):
            asyncio.run(
                _leave(rig.gateway.url, _head(len(body), "left-running"), body, then=rig.controls.entered)
            )
            # Logged while the batch is still held: the request does not wait for the model.
            line = _request_line(caplog, "left-running")
            assert " status=499 " in line, line
            assert rig.controls.gate_closed()
    finally:
        rig.controls.open_gate()
    _no_failure_logged(caplog)
    _wait_for(lambda: rig.counted("499") == before + 1)
    response = httpx.post(
        f"{rig.gateway.v1}/embeddings", headers=rig.gateway.headers(), json={"model": MINILM, "input": "next"}
    )
    assert response.status_code == 200


# -- a storm against a real `python -m app serve` ----------------------------------------------

STORM = 50
BULK = [f"bulk text number {i}, long enough to cost the model some time " * 3 for i in range(64)]


async def _storm(url: str) -> None:
    body = _body(BULK)
    clients = []
    for i in range(STORM):
        head = _head(len(body), f"storm-{i}")
        # Every other client leaves halfway through its body; the rest after sending it all.
        clients.append(_leave(url, head, body if i % 2 else body[: len(body) // 2]))
    await asyncio.wait_for(asyncio.gather(*clients), timeout=60)


def test_a_storm_of_clients_leaving_after_50ms_logs_499_and_no_500(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {
        "GATEWAY_API_KEY": TEST_KEY,
        "GATEWAY__METRICS__ENABLED": "true",
        "GATEWAY__METRICS__PORT": str(metrics_port),
        "GATEWAY__LIMITS__RPM": "0",
        "GATEWAY__LIMITS__TPM": "0",
    }
    with gateway_processes(env, logs=tmp_path) as (gateway,):
        asyncio.run(_storm(gateway.url))

        def logged() -> list[str]:
            return re.findall(r"request_id=storm-\d+ .*", gateway.log.read_text())

        _wait_for(lambda: len(logged()) == STORM, timeout=120)
        ok = httpx.post(
            f"{gateway.url}/v1/embeddings",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            json={"model": MINILM, "input": "still serving"},
            timeout=60,
        )
        assert ok.status_code == 200
        exposition = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        output = gateway.stop()
    statuses = [re.search(r" status=(\d+) ", line).group(1) for line in logged()]  # type: ignore[union-attr]
    assert set(statuses) <= {"499", "200"}, statuses
    assert statuses.count("499") >= STORM // 2  # at least every client that left mid-body
    assert "Traceback" not in output and " ERROR " not in output and "status=500" not in output
    assert _counted(exposition, "499") == statuses.count("499")
    assert not [k for k in samples(exposition) if ("status", "500") in k[1]]
