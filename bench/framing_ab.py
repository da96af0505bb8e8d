"""A/B of the HTTP hot path: uvicorn's stock httptools protocol against app.framing's bounded
one, on small requests.

    python -m bench.framing_ab [--requests 2000] [--rounds 3]

Each round starts a gateway (no model: /health and 404s need none) with one protocol, then
with the other, on the same port range, and sends N sequential keep-alive requests over one
raw socket (so the client costs little), alternately to GET /health and to an unknown route
answered with OpenAI's 404 envelope. It reports the server process's CPU time per request
(user + system, which other work on a shared machine disturbs far less than wall time) and
the requests per second. Rounds interleave A and B; medians and spread are printed.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time

import psutil

from tests.serving import free_port

SERVE = """
import sys, uvicorn
from app.config import Settings, ServerSettings
from app.framing import uvicorn_options
from app.server import create_app
settings = Settings(server=ServerSettings(port={port}))
options = uvicorn_options(settings.server) if sys.argv[1] == "bounded" else {{"http": "httptools"}}
uvicorn.run(create_app(settings), host="127.0.0.1", port={port}, log_level="warning", **options)
"""

REQUESTS = [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n"]


def _response(sock: socket.socket, buffer: bytearray) -> None:
    """Read one response (headers with content-length, then the body) from `sock`."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    buffer[:] = rest[length:]


def _run(port: int, n: int, server: psutil.Process) -> tuple[float, float]:
    """Server CPU microseconds per request, and requests per second, over one connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buffer = bytearray()
        for i in range(200):  # warm-up
            sock.sendall(REQUESTS[i % 2])
            _response(sock, buffer)
        cpu = server.cpu_times()
        started = time.perf_counter()
        for i in range(n):
            sock.sendall(REQUESTS[i % 2])
            _response(sock, buffer)
        elapsed = time.perf_counter() - started
        after = server.cpu_times()
        used = (after.user - cpu.user) + (after.system - cpu.system)
        return used / n * 1e6, n / elapsed


def _serve_and_measure(variant: str, n: int) -> tuple[float, float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE.format(port=port), variant], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{variant} server did not start") from None
                time.sleep(0.1)
        return _run(port, n, psutil.Process(server.pid))
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cpu: dict[str, list[float]] = {"stock": [], "bounded": []}
    rate: dict[str, list[float]] = {"stock": [], "bounded": []}
    for round_ in range(args.rounds):
        order = ["stock", "bounded"] if round_ % 2 == 0 else ["bounded", "stock"]
        for variant in order:
            us, per_second = _serve_and_measure(variant, args.requests)
            cpu[variant].append(us)
            rate[variant].append(per_second)
            print(
                f"round {round_ + 1} {variant:8s} {us:6.0f} us CPU/request {per_second:7.0f} req/s",
                flush=True,
            )
    print(f"{args.requests} sequential requests per round, {args.rounds} rounds interleaved")
    for variant in cpu:
        us, rates = cpu[variant], rate[variant]
        print(
            f"{variant:8s} CPU/request median {statistics.median(us):5.0f} us "
            f"(min {min(us):.0f}, max {max(us):.0f}); "
            f"median {statistics.median(rates):6.0f} req/s (min {min(rates):.0f}, max {max(rates):.0f})"
        )


if __name__ == "__main__":
    main()
