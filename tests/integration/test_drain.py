"""Graceful drain of a real `python -m app serve` process: SIGTERM under load, a stalled client,
a second signal."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MINILM, TEST_KEY
from tests.load import Load
from tests.processes import GatewayProcess, gateway_processes

DRAIN = 2.0
# Generous, so that the requests in flight finish on a busy CI machine; the stalled client's
# gateway has a short one, which it must not outlast.
TIMEOUT = 20.0
SHORT_TIMEOUT = 4.0


def _env(timeout: float) -> dict[str, str]:
    return {
        "GATEWAY_API_KEY": TEST_KEY,
        "GATEWAY__SERVER__DRAIN_SECONDS": str(DRAIN),
        "GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS": str(timeout),
        # Small batches, so that a signal lands while one runs and others wait.
        "GATEWAY__ENGINE__MAX_BATCH_SIZE": "4",
        "GATEWAY__ENGINE__TORCH_THREADS": "1",
    }


TEXTS = [f"document {i} about kittens, embeddings and graceful shutdowns" for i in range(4)]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    """Three gateways started in parallel; each test signals its own."""
    envs = (_env(TIMEOUT), _env(SHORT_TIMEOUT), _env(TIMEOUT))
    with gateway_processes(*envs, logs=tmp_path_factory.mktemp("drain")) as started:
        yield started


def _wait_for_503_ready(url: str, within: float) -> float:
    """Seconds until /ready answers 503."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if httpx.get(f"{url}/ready", timeout=within).status_code == 503:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"/ready did not turn 503 within {within} s")


def test_sigterm_under_load_serves_everything_and_exits_0(gateways: list[GatewayProcess]) -> None:
    gw = gateways[0]
    body = {"model": MINILM, "input": TEXTS}
    with Load(f"{gw.url}/v1/embeddings", TEST_KEY, body, clients=4, max_seconds=60) as load:
        deadline = time.monotonic() + 30
        while load.count() < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert _wait_for_503_ready(gw.url, within=1.0) < 1.0
        # New requests keep arriving (and are served) until shortly before the drain ends.
        time.sleep(DRAIN - 0.5)
        outcomes = load.stop()
        status = gw.wait_exit(TIMEOUT + 5)
        took = time.monotonic() - signalled
    log = gw.log.read_text()
    assert status == 0, log
    assert took < TIMEOUT, took
    assert [o for o in outcomes if o.status != 200] == []
    assert sum(o.sent > signalled for o in outcomes) >= 4  # arrivals during the drain, all served
    in_flight = re.search(r"SIGTERM: draining.*; (\d+) requests in flight", log)
    assert in_flight is not None and int(in_flight.group(1)) >= 1, log  # mid-batch
    assert re.search(r"drained in [\d.]+ s: \d+ requests answered while draining, 0 of them cut short", log)


def test_a_stalled_client_does_not_hold_the_exit_and_gets_503(gateways: list[GatewayProcess]) -> None:
    gw = gateways[1]
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port)) as stalled:
        stalled.sendall(head.encode() + b'{"model": "all-MiniLM')  # and then nothing more
        time.sleep(0.2)
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        status = gw.wait_exit(SHORT_TIMEOUT + 5)
        took = time.monotonic() - signalled
        stalled.settimeout(5)
        answer = b""
        while chunk := stalled.recv(65536):
            answer += chunk
    assert status == 0, gw.log.read_text()
    assert took < SHORT_TIMEOUT + 0.5, took
    head_lines = answer.split(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert head_lines[0] == b"http/1.1 503 service unavailable", answer
    assert b"retry-after: 1" in head_lines and b"connection: close" in head_lines
    assert b'"error"' in answer and b"shutting down" in answer


def test_a_second_signal_exits_at_once(gateways: list[GatewayProcess], tmp_path: Path) -> None:
    gw = gateways[2]
    gw.signal(signal.SIGTERM)
    _wait_for_503_ready(gw.url, within=1.0)
    again = time.monotonic()
    gw.signal(signal.SIGTERM)
    status = gw.wait_exit(5)
    assert time.monotonic() - again < 1.0
    assert status == 128 + signal.SIGTERM
    assert "SIGTERM again: exiting now" in gw.log.read_text()
