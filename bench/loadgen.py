"""Async load generator: bounded in requests and seconds, loopback only, every response checked.

    python -m bench.loadgen --url http://127.0.0.1:8000 --key sk-... --model all-MiniLM-L6-v2 \
        --concurrency 32 --inputs 1 --words 12 --requests 3000 --seconds 20

It asks for base64 (as the openai SDK does by default), decodes every vector and checks its
count, size and length; any failure stops the run with a non-zero exit. Meanwhile it probes
/health every 100 ms, to show that the event loop answers while the model is saturated.

`--client raw` sends the same requests over keep-alive HTTP/1.1 connections of its own
(one per concurrent client, a pre-encoded request, the response read by its Content-Length)
instead of aiohttp's: the client's own cost per request, which on a 2-core machine shares
a core with the gateway and is counted in every latency, drops from about 0.5 to 1.5 ms to
about 0.1 ms (bench/RESULTS.md), as with the compiled load generators peers use (wrk, oha).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import socket
import statistics
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from bench.workload import texts

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class CheckFailed(Exception):
    pass


class RawConnection:
    """One keep-alive HTTP/1.1 connection: a request out, its response (by Content-Length) back."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self._address = (host, port)
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers}.items()).encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._streams is None:
            reader, writer = await asyncio.open_connection(*self._address)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._streams = reader, writer
        reader, writer = self._streams
        extra = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body) if body else b""
        line = f"{method} {path} HTTP/1.1\r\n".encode()
        writer.write(b"".join((line, self._head, extra, b"\r\n", body)))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise CheckFailed(f"a response without Content-Length: {head[:200]!r}")
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


def _check(payload: dict[str, Any], inputs: int, dimensions: int | None) -> int:
    """Validate one response; returns its prompt tokens."""
    data = payload["data"]
    if len(data) != inputs or [d["index"] for d in data] != list(range(inputs)):
        raise CheckFailed(f"expected {inputs} embeddings in order, got {len(data)}")
    for item in data:
        raw = item["embedding"]
        vector = (
            np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str) else np.asarray(raw)
        )
        if dimensions is not None and vector.shape != (dimensions,):
            raise CheckFailed(f"vector of shape {vector.shape}, expected ({dimensions},)")
        if not abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3:
            raise CheckFailed("vector is not unit length")
    return int(payload["usage"]["prompt_tokens"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if urlsplit(args.url).hostname not in LOOPBACK:
        raise SystemExit("the load generator only targets loopback addresses")
    headers = {"Authorization": f"Bearer {args.key}"}
    pool = texts(max(args.requests * args.inputs, 1), args.words, seed=args.seed)
    counter = itertools.count()
    latencies: list[float] = []
    health: list[float] = []
    tokens = 0
    dimensions: int | None = None
    deadline = 0.0
    stop = asyncio.Event()

    async def post(client: aiohttp.ClientSession | RawConnection, body: dict[str, Any]) -> bytes:
        if isinstance(client, RawConnection):
            status, text = await client.request("POST", "/v1/embeddings", json.dumps(body).encode())
        else:
            async with client.post(f"{args.url}/v1/embeddings", json=body, headers=headers) as response:
                status, text = response.status, await response.read()
        if status != 200:
            raise CheckFailed(f"status {status}: {text[:300]!r}")
        return text

    async def one(client: aiohttp.ClientSession | RawConnection, record: bool) -> None:
        nonlocal tokens, dimensions
        n = next(counter)
        start = (n * args.inputs) % len(pool)
        batch = pool[start : start + args.inputs]
        body: dict[str, Any] = {"model": args.model, "input": batch[0] if args.inputs == 1 else batch}
        if args.format == "base64":
            body["encoding_format"] = "base64"
        began = time.perf_counter()
        text = await post(client, body)
        elapsed = time.perf_counter() - began
        payload = json.loads(text)
        if dimensions is None:
            first = payload["data"][0]["embedding"]
            dimensions = len(base64.b64decode(first)) // 4 if isinstance(first, str) else len(first)
        used = _check(payload, len(batch), dimensions)
        if record:
            latencies.append(elapsed)
            tokens += used

    sent = 0

    raw = args.client == "raw"
    address = urlsplit(args.url)
    connections: list[RawConnection] = []

    def client_of(session: aiohttp.ClientSession) -> aiohttp.ClientSession | RawConnection:
        """The session, or for `--client raw` a connection of this client's own."""
        if not raw:
            return session
        connections.append(RawConnection(address.hostname or "", address.port or 80, headers))
        return connections[-1]

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        client = client_of(session)
        while not stop.is_set() and sent < args.requests and time.perf_counter() < deadline:
            sent += 1
            await one(client, record=True)

    async def probe(session: aiohttp.ClientSession) -> None:
        client = client_of(session)
        while not stop.is_set():
            began = time.perf_counter()
            try:
                if isinstance(client, RawConnection):
                    await asyncio.wait_for(client.request("GET", "/health"), args.timeout)
                else:
                    async with client.get(f"{args.url}/health") as response:
                        await response.read()
            except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError, TimeoutError):
                client = client_of(session)  # counted as taking until now; a new connection
            health.append(time.perf_counter() - began)
            await asyncio.sleep(0.1)

    connector = aiohttp.TCPConnector(limit=args.concurrency + 2)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = client_of(session)
        for _ in range(args.warmup):
            await one(warm, record=False)
        prober = asyncio.create_task(probe(session))
        deadline = time.perf_counter() + args.seconds
        started = time.perf_counter()
        try:
            await asyncio.gather(*[worker(session) for _ in range(args.concurrency)])
        finally:
            stop.set()
        elapsed = time.perf_counter() - started
        await prober
        for connection in connections:
            await connection.close()
    requests = len(latencies)
    latencies.sort()
    return {
        "requests": requests,
        "seconds": elapsed,
        "inputs_per_s": requests * args.inputs / elapsed,
        "tokens_per_s": tokens / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
        "health_max_ms": max(health) * 1000 if health else None,
        "health_p99_ms": sorted(health)[int(0.99 * (len(health) - 1))] * 1000 if health else None,
        "health_probes": len(health),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--inputs", type=int, default=1)
    parser.add_argument("--words", type=int, default=12)
    parser.add_argument("--requests", type=int, default=1000, help="at most this many requests")
    parser.add_argument("--seconds", type=float, default=20.0, help="and at most this long")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--format", choices=["base64", "float"], default="base64")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for one request")
    parser.add_argument(
        "--client", choices=["aiohttp", "raw"], default="aiohttp", help="HTTP client (see above)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
