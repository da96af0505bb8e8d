"""The in-process limit: the backend's own batched forward on the benchmark's texts, with no
server in between. Run pinned to the core the server gets (bench.run_all does).

    python -m bench.limit --kind encoder --base bundled:all-MiniLM-L6-v2 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.workload import texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="model")
    parser.add_argument("--kind", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    args = parser.parse_args()

    from app.config import ModelSettings
    from app.models.registry import load_backend
    from app.models.torch_runtime import configure_threads

    configure_threads(args.threads)
    backend = load_backend(
        ModelSettings(
            name=args.name,
            kind=args.kind,
            base_model=args.base,
            max_length=args.max_length,
            device=args.device,
            cuda_graphs=not args.no_cuda_graphs,
        )
    )
    results: dict[str, object] = {"device": backend.device}
    for words in (12, 60):
        sample = texts(args.batch_size * 4, words, seed=words)
        tokenized = backend.tokenize(sample, "")
        batches = [tokenized[i : i + args.batch_size] for i in range(0, len(tokenized), args.batch_size)]
        backend.embed(batches[0])  # warm-up
        done = tokens = 0
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            for batch in batches:
                backend.embed(batch)
                done += len(batch)
                tokens += sum(len(t.input_ids) for t in batch)
        elapsed = time.perf_counter() - started
        results[f"batched_{words}w"] = {"inputs_per_s": done / elapsed, "tokens_per_s": tokens / elapsed}
    # One text at a time, tokenizer included: what a single embedding costs in-process.
    singles = texts(200, 12, seed=99)
    backend.embed(backend.tokenize(singles[:1], ""))
    times = []
    deadline = time.perf_counter() + args.seconds / 2
    for text in singles:
        started = time.perf_counter()
        backend.embed(backend.tokenize([text], ""))
        times.append(time.perf_counter() - started)
        if time.perf_counter() > deadline:
            break
    results["single_12w_ms_p50"] = statistics.median(times) * 1000
    print(json.dumps(results))


if __name__ == "__main__":
    main()
