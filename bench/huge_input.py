"""Huge inputs against the gateway on the default config (bundled all-MiniLM-L6-v2, CPU).

    python -m bench.huge_input [--rounds 3] [--string-rounds 20] [--seconds 60]

1. One 14 MiB string: its latency, and the server's RSS before, after and at peak.
2. Small requests (one short text, sent one after another) while a client sends huge
   requests back to back: first 14 MiB strings (`--string-rounds` of them: each takes about
   a tenth of a second, so it takes a score for a worst case over more than a few small
   requests), then bodies of many long texts (`--rounds`). Reports
   the small requests' latency (p50, p99, max) in each phase, and alone as a reference.

3. `--holds`: in process, the longest a huge request holds the model's tokenizer thread at
   a stretch (one turn), which is what a small request waits for tokenization.

Bounded (rounds and seconds), loopback only, every response checked. Run it on a quiet
machine: the numbers are the machine's as much as the gateway's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.run_all import ROOT, RssSampler, _env, _free_port, _wait

KEY = "sk-bench-huge-0123456789"
MODEL = "all-MiniLM-L6-v2"
HUGE = ("Every word of this sentence counts as a token or two. " * 270_000)[: 14 * 1024 * 1024]
# Many texts just under the size the gateway still tokenizes whole (2 character budgets,
# twice): the most tokenizer work per character a body can carry.
MANY = [f"{i} " + HUGE[:9_700] for i in range(300)]


def _post(client: httpx.Client, url: str, text: str | list[str] | bytes) -> httpx.Response:
    """`text` as the input, or `bytes`: a body encoded beforehand (see `_while_huge`)."""
    body = text if isinstance(text, bytes) else json.dumps({"model": MODEL, "input": text}).encode()
    response = client.post(
        f"{url}/v1/embeddings",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        content=body,
        timeout=300,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return response


def _small_latencies(url: str, stop: threading.Event, limit_s: float) -> list[float]:
    seen: list[float] = []
    deadline = time.monotonic() + limit_s
    with httpx.Client() as client:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            _post(client, url, f"a small request {len(seen)}")
            seen.append(time.perf_counter() - started)
            time.sleep(0.01)
    return seen


def _summary(latencies: list[float]) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "count": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "max_ms": round(ms[-1], 1),
    }


def _while_huge(url: str, bodies: list[str | list[str]], seconds: float) -> dict[str, Any]:
    """Small requests for as long as the huge ones take (they are sent back to back)."""
    stop = threading.Event()
    huge_ms: list[float] = []
    # Encoded before the phase: encoding 14 MiB of JSON holds this process's GIL for tens
    # of milliseconds, which the small requests' thread here would be timed waiting for.
    encoded = [json.dumps({"model": MODEL, "input": body}).encode() for body in bodies]

    def sender() -> None:
        with httpx.Client() as client:
            for body in encoded:
                started = time.perf_counter()
                _post(client, url, body)
                huge_ms.append(round((time.perf_counter() - started) * 1000))
        stop.set()

    thread = threading.Thread(target=sender)
    thread.start()
    small = _small_latencies(url, stop, seconds)
    thread.join(seconds + 300)
    return {"small": _summary(small), "huge_request_ms": huge_ms}


def tokenizer_holds() -> dict[str, Any]:
    """In process: how long one request holds the model's tokenizer thread at a stretch
    (a turn), for each huge workload; what a small request can wait for tokenization."""
    from transformers import AutoTokenizer

    from app.engine.turns import turns
    from app.models.registry import resolve_path
    from app.models.tokenization import tokenize_truncating

    tokenizer = AutoTokenizer.from_pretrained(resolve_path(f"bundled:{MODEL}"))
    tokenize_truncating(tokenizer, [HUGE[:100_000]], 256)  # the vocabulary scan, once per model
    results: dict[str, Any] = {}
    for name, texts in (("one_14mib_string", [HUGE]), ("many_long_texts", MANY)):
        held = []
        for turn in turns(list(texts)):
            started = time.perf_counter()
            tokenize_truncating(tokenizer, [t for t in turn if isinstance(t, str)], 256)
            held.append((time.perf_counter() - started) * 1000)
        results[name] = {"turns": len(held), "max_turn_ms": round(max(held), 1), "total_ms": round(sum(held))}
    return results


def run(
    rounds: int,
    seconds: float,
    server_root: Path = ROOT,
    only_one: bool = False,
    string_rounds: int = 20,
    config: Path | None = None,
) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**_env(), "GATEWAY_API_KEY": KEY, "XDG_STATE_HOME": tempfile.mkdtemp(prefix="bench-state-")}
    with tempfile.TemporaryFile() as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)]
            + (["--config", str(config)] if config is not None else []),
            cwd=server_root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(f"{url}/ready", process)
            results: dict[str, Any] = {}
            with httpx.Client() as client:
                for _ in range(20):  # warm
                    _post(client, url, "warm up")
                with RssSampler(process.pid) as rss:
                    before = rss.rss()
                    started = time.perf_counter()
                    usage = _post(client, url, HUGE).json()["usage"]["prompt_tokens"]
                    took = time.perf_counter() - started
                    time.sleep(0.5)
                    after = rss.rss()
                results["one_14mib_string"] = {
                    "seconds": round(took, 3),
                    "prompt_tokens": usage,
                    "rss_before_mib": before >> 20,
                    "rss_after_mib": after >> 20,
                    "rss_peak_mib": rss.peak >> 20,
                }
            if only_one:
                return results
            stop = threading.Event()
            timer = threading.Timer(min(seconds, 10), stop.set)
            timer.start()
            results["small_alone"] = _summary(_small_latencies(url, stop, seconds))
            results["small_while_14mib_strings"] = _while_huge(url, [HUGE] * string_rounds, seconds)
            results["small_while_many_long_texts"] = _while_huge(url, [MANY] * rounds, seconds)
            return results
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="300-text requests")
    parser.add_argument("--string-rounds", type=int, default=20, help="14 MiB strings")
    parser.add_argument("--seconds", type=float, default=120, help="longest a phase may run")
    parser.add_argument(
        "--server-root", type=Path, default=ROOT, help="serve the app of this tree (e.g. an export of main)"
    )
    parser.add_argument("--only-one", action="store_true", help="only the one 14 MiB string")
    parser.add_argument("--config", type=Path, help="serve with this config (default: the default config)")
    parser.add_argument("--holds", action="store_true", help="only the tokenizer turns, in process")
    args = parser.parse_args()
    if args.holds:
        print(json.dumps(tokenizer_holds(), indent=2))
        return
    results = run(args.rounds, args.seconds, args.server_root, args.only_one, args.string_rounds, args.config)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
