"""What an HTTP round trip costs on this host after the CPU has idled: the share of a c=1
latency that is not the gateway's doing.

    python -m bench.idle_probe --url http://127.0.0.1:8000 --pause-ms 20

GET /health (no auth, no model) over one keep-alive connection, back to back and then with
a pause before each request as long as a forward the client waits for. Between a c=1
client's requests the gateway's core idles while the model runs; the same few hundred
microseconds of Python then take several times as long (on the 2-core VM of
bench/RESULTS.md: 0.19 to 0.25 ms back to back, 0.54 to 1.47 ms after 20 ms idle, with
nothing else running). A peer server on the same host would pay it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit

from bench.loadgen import LOOPBACK, RawConnection


async def round_trips(url: str, pause: float, count: int) -> list[float]:
    address = urlsplit(url)
    if address.hostname not in LOOPBACK:
        raise SystemExit("the idle probe only targets loopback addresses")
    connection = RawConnection(address.hostname or "127.0.0.1", address.port or 80, {})
    times = []
    try:
        for _ in range(count):
            if pause:
                time.sleep(pause)  # the whole client idles, as while it waits for a forward
            began = time.perf_counter()
            status, _ = await connection.request("GET", "/health")
            times.append(time.perf_counter() - began)
            if status != 200:
                raise SystemExit(f"/health answered {status}")
    finally:
        await connection.close()
    return times[count // 10 :]  # the first tenth warms the connection up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--pause-ms", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    back_to_back = asyncio.run(round_trips(args.url, 0.0, args.requests))
    paused = asyncio.run(round_trips(args.url, args.pause_ms / 1000, args.requests))
    print(
        json.dumps(
            {
                "pause_ms": args.pause_ms,
                "back_to_back_ms_p50": statistics.median(back_to_back) * 1000,
                "after_pause_ms_p50": statistics.median(paused) * 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
