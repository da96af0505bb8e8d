"""The latency scenario with a Batch API job running behind it.

    python -m bench.batch_scenario --url http://127.0.0.1:8000 --key sk-... --model all-MiniLM-L6-v2 \
        --lines 10000 --requests 400 --seconds 15

Uploads a batch input file of `--lines` requests (one input of `--words` words each, unique
texts), starts the batch through the SDK's own calls, runs bench/loadgen.py's latency
scenario (one client, one input) while the job runs, then waits (bounded) for the job and
checks its output: every custom_id exactly once. Prints one JSON line: the latency run, how
many lines the job had done when the latency run ended, and the job's own lines per second.
Run by bench/run_all.py against the gateway, after its scenarios without a job.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from bench.workload import texts

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def batch_file(model: str, lines: int, words: int) -> bytes:
    pool = texts(lines, words, seed=7)  # another seed than the latency run's texts
    return "".join(
        json.dumps(
            {
                "custom_id": f"b{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": model, "input": t},
            }
        )
        + "\n"
        for i, t in enumerate(pool)
    ).encode()


def run(args: argparse.Namespace, loadgen_prefix: list[str]) -> dict[str, Any]:
    if urlsplit(args.url).hostname not in LOOPBACK:
        raise SystemExit("the batch scenario only targets loopback addresses")
    sdk = openai.OpenAI(base_url=f"{args.url}/v1", api_key=args.key, max_retries=0, timeout=600)
    upload = sdk.files.create(
        file=("bench.jsonl", io.BytesIO(batch_file(args.model, args.lines, args.words))), purpose="batch"
    )
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    started = time.monotonic()
    # Let the job get going before the latency run starts measuring.
    while (sdk.batches.retrieve(batch.id).request_counts or _ZERO).completed == 0:
        if time.monotonic() - started > 120:
            raise SystemExit("the batch job did not start within 120 s")
        time.sleep(0.05)
    argv = [
        *loadgen_prefix,
        "-m",
        "bench.loadgen",
        f"--url={args.url}",
        f"--key={args.key}",
        f"--model={args.model}",
        "--concurrency=1",
        "--inputs=1",
        f"--words={args.latency_words}",
        f"--requests={args.requests}",
        f"--seconds={args.seconds}",
    ]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr.strip()[-500:]}")
    latency: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    during = sdk.batches.retrieve(batch.id)
    done_during = (during.request_counts or _ZERO).completed
    still_running = during.status not in ("completed", "failed", "cancelled", "expired")
    deadline = time.monotonic() + args.wait
    final = during
    while final.status not in ("completed", "failed", "cancelled", "expired"):
        if time.monotonic() > deadline:
            sdk.batches.cancel(batch.id)
            raise SystemExit(f"the batch job was not done within {args.wait} s ({final.request_counts})")
        time.sleep(0.5)
        final = sdk.batches.retrieve(batch.id)
    job_seconds = time.monotonic() - started
    if final.status != "completed" or final.output_file_id is None:
        raise SystemExit(f"the batch job ended {final.status}: {final.errors}")
    ids = Counter(
        json.loads(line)["custom_id"] for line in sdk.files.content(final.output_file_id).text.splitlines()
    )
    if ids != Counter(f"b{i}" for i in range(args.lines)):
        raise SystemExit("the output does not hold every custom_id exactly once")
    return {
        "latency": latency,
        "batch_lines": args.lines,
        "batch_lines_done_during_latency_run": done_during,
        "batch_still_running_at_end_of_latency_run": still_running,
        "batch_seconds": job_seconds,
        "batch_lines_per_s": args.lines / job_seconds,
        "batch_every_custom_id_once": True,
    }


_ZERO = openai.types.BatchRequestCounts(total=0, completed=0, failed=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=10_000, help="requests in the batch job")
    parser.add_argument("--words", type=int, default=60, help="words per batch input")
    parser.add_argument("--latency-words", type=int, default=12)
    parser.add_argument("--requests", type=int, default=400, help="latency run: at most this many requests")
    parser.add_argument("--seconds", type=float, default=15.0, help="latency run: and at most this long")
    parser.add_argument("--wait", type=float, default=1800.0, help="seconds to wait for the job after")
    parser.add_argument("--client-core", help="pin the load generator to this core (taskset)")
    args = parser.parse_args()
    prefix = ["taskset", "-c", args.client_core] if args.client_core else []
    print(json.dumps(run(args, [*prefix, sys.executable])))


if __name__ == "__main__":
    main()
