"""Bounded HTTP framing (app.framing) through a real server and raw sockets: headers past
`server.max_header_bytes` get 431 and cost no memory, slowloris, slow-body and idle
connections are closed after their timeouts (small here), and a normal request is served
promptly meanwhile."""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import ServerSettings
from tests.cheap_forward import cheap_loader
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.serving import Gateway, run_gateway

MAX_HEADER = 16 * 1024
TIMEOUT = 1.0  # header, body and keep-alive timeouts in these tests
SLACK = 2.5  # what a busy shared machine may add to a 1 s timeout


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    server = ServerSettings(
        max_header_bytes=MAX_HEADER,
        header_timeout_seconds=TIMEOUT,
        body_timeout_seconds=TIMEOUT,
        keep_alive_timeout_seconds=TIMEOUT,
    )
    with run_gateway(settings_with(server=server), key=TEST_KEY, loader=cheap_loader) as gw:
        yield gw


def _connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _error_of(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    error: dict[str, object] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _rss_bytes() -> int:
    fields = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()
    return int(fields[0]) * 1024


def _served_promptly(gateway: Gateway) -> float:
    started = time.perf_counter()
    response = httpx.post(
        f"{gateway.v1}/embeddings",
        headers=gateway.headers(),
        json={"model": MINILM, "input": "hi"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_a_header_that_never_ends_is_cut_at_the_limit_without_memory_growth(gateway: Gateway) -> None:
    _served_promptly(gateway)  # warm
    before = _rss_bytes()
    sent = 0
    response = b""
    with _connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        chunk = b"a" * 65536
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 64 * 1024 * 1024 and not response:
                sock.sendall(chunk)
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    response = sock.recv(65536)
        response += _read_all(sock)
    # Answered once the limit was passed (plus what socket buffers hold), not after 64 MiB.
    assert sent < 8 * 1024 * 1024
    assert response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), response[:100]
    assert _rss_bytes() - before < 8 * 1024 * 1024
    _served_promptly(gateway)


@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
def test_a_huge_authorization_header_gets_431_not_401(gateway: Gateway, size: int) -> None:
    with _connect(gateway) as sock:
        head = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {'k' * size}\r\n"
        body = b'{"model": "all-MiniLM-L6-v2", "input": "hi"}'
        request = head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # may be refused before all of it is sent
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), response[:200]
    error = _error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"The request line and headers are over {MAX_HEADER} bytes."


def test_headers_just_under_the_limit_sent_in_pieces_are_served(gateway: Gateway) -> None:
    filler = "".join(f"X-Filler-{i}: {'v' * 100}\r\n" for i in range(130))  # ~15 KiB
    body = json.dumps({"model": MINILM, "input": "hi"}).encode()
    request = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_KEY}\r\n{filler}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    assert MAX_HEADER - 2048 < len(request) < MAX_HEADER
    with _connect(gateway) as sock:
        for start in range(0, len(request), 1000):  # in 15 pieces, well within the timeout
            sock.sendall(request[start : start + 1000])
            time.sleep(0.01)
        response = _read_all(sock)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response[:300]


def _slowloris(gateway: Gateway, closed_after: list[float]) -> None:
    with _connect(gateway) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.1)
        response = b""
        try:
            while time.monotonic() - started < TIMEOUT + 3 * SLACK:
                sock.sendall(b"a")  # a header byte every 100 ms
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                response += chunk
                if not chunk:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n") or response == b"", response
        closed_after.append(time.monotonic() - started)


def test_slowloris_connections_are_closed_after_the_header_timeout(gateway: Gateway) -> None:
    closed_after: list[float] = []
    clients = [threading.Thread(target=_slowloris, args=(gateway, closed_after)) for _ in range(20)]
    for client in clients:
        client.start()
    time.sleep(0.3)
    latency = _served_promptly(gateway)  # while 20 connections trickle their headers
    for client in clients:
        client.join(30)
    assert latency < SLACK
    assert len(closed_after) == 20
    assert all(TIMEOUT - 0.1 < t < TIMEOUT + SLACK for t in closed_after), closed_after


def test_idle_connections_are_closed_after_the_keep_alive_timeout(gateway: Gateway) -> None:
    idle = [_connect(gateway) for _ in range(50)]
    started = time.monotonic()
    try:
        latency = _served_promptly(gateway)
        for sock in idle:
            assert _read_all(sock, timeout=TIMEOUT + SLACK) == b""
        elapsed = time.monotonic() - started
    finally:
        for sock in idle:
            sock.close()
    assert latency < SLACK
    assert TIMEOUT - 0.1 < elapsed < TIMEOUT + SLACK
    # After a response, as before: the connection is kept for the keep-alive timeout, then closed.
    with _connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        response = _read_all(sock, timeout=TIMEOUT + SLACK)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert TIMEOUT - 0.1 < time.monotonic() - started < TIMEOUT + SLACK


def test_a_body_sent_too_slowly_is_cut_off_and_logged_408(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), _connect(gateway) as sock:
        sock.sendall(
            (
                f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_KEY}\r\n"
                "x-request-id: slow-body-408\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n"
            ).encode()
        )
        started = time.monotonic()
        sock.settimeout(0.1)
        closed = False
        try:
            while time.monotonic() - started < TIMEOUT + 3 * SLACK and not closed:
                sock.sendall(b" ")  # a body byte every 100 ms
                with contextlib.suppress(TimeoutError):
                    closed = sock.recv(65536) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        elapsed = time.monotonic() - started
        assert closed and elapsed < TIMEOUT + SLACK
        deadline = time.monotonic() + 5
        while not [r for r in caplog.records if "request_id=slow-body-408 " in r.getMessage()]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    (line,) = [r.getMessage() for r in caplog.records if "request_id=slow-body-408 " in r.getMessage()]
    assert " status=408 " in line
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
