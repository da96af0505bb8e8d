"""Async load generator: bounded in requests and seconds, loopback only, every response checked.

    python -m bench.loadgen --url http://127.0.0.1:8000 --key sk-... --model all-MiniLM-L6-v2 \
        --concurrency 32 --inputs 1 --words 12 --requests 3000 --seconds 20

It asks for base64 (as the openai SDK does by default), decodes every vector and checks its
count, size and length; any failure stops the run with a non-zero exit. Meanwhile it probes
/health every 100 ms, to show that the event loop answers while the model is saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
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

    async def one(session: aiohttp.ClientSession, record: bool) -> None:
        nonlocal tokens, dimensions
        n = next(counter)
        start = (n * args.inputs) % len(pool)
        batch = pool[start : start + args.inputs]
        body: dict[str, Any] = {"model": args.model, "input": batch[0] if args.inputs == 1 else batch}
        if args.format == "base64":
            body["encoding_format"] = "base64"
        began = time.perf_counter()
        async with session.post(f"{args.url}/v1/embeddings", json=body, headers=headers) as response:
            text = await response.read()
            if response.status != 200:
                raise CheckFailed(f"status {response.status}: {text[:300]!r}")
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

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while not stop.is_set() and sent < args.requests and time.perf_counter() < deadline:
            sent += 1
            await one(session, record=True)

    async def probe(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                async with session.get(f"{args.url}/health") as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                pass  # counted as taking until now
            health.append(time.perf_counter() - began)
            await asyncio.sleep(0.1)

    connector = aiohttp.TCPConnector(limit=args.concurrency + 2)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(args.warmup):
            await one(session, record=False)
        prober = asyncio.create_task(probe(session))
        deadline = time.perf_counter() + args.seconds
        started = time.perf_counter()
        try:
            await asyncio.gather(*[worker(session) for _ in range(args.concurrency)])
        finally:
            stop.set()
        elapsed = time.perf_counter() - started
        await prober
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
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
