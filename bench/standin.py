"""BENCHMARK ONLY: a stand-in for a large model on a GPU, to measure the gateway's own cost
without one. Never reachable from a config a user writes: the engine gets it only through
the loader argument, which `python -m bench.standin serve` passes.

An H100 serving an 8B-shaped Llama in bf16 spends most of a small forward in Python
launching ~1,400 kernels, holding the GIL (bench/RESULTS-gpu.md). The stand-in model does
the same to the process it runs in: 18 ms + 0.75 ms per row in a pure-Python loop (GIL
held), then 1 ms in time.sleep (GIL released, as while the GPU finishes), and returns
4096-dimension float32 vectors, the same for the same input whatever its batch.

    python -m bench.standin limit                       # its in-process batched limit
    python -m bench.standin serve --config bench.toml   # the gateway serving it

Both take `--fixed-ms` and `--row-ms` for another model's costs (18 and 0.75 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.config import ModelSettings
from app.models.protocol import TokenizedText

DIMENSIONS = 4096
FIXED_SECONDS, ROW_SECONDS, SLEEP_SECONDS = 0.018, 0.00075, 0.001
NAME = "standin"


class StandinTokenizer:
    """One id per word (a hash), plus a leading id: cheap, as a fast tokenizer is."""

    def __init__(self, entry: ModelSettings) -> None:
        self.max_length = entry.max_length
        self.vocab_size = 50_000

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        out = []
        for text in texts:
            words = f"{instruction} {text}".split() if instruction else text.split()
            ids = [1, *(2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words)]
            kept = tuple(ids[: self.max_length])
            out.append(TokenizedText(kept, len(kept), len(ids)))
        return out

    def decode_ids(self, ids: Sequence[int]) -> str:
        return " ".join(f"w{i}" for i in ids)


class StandinModel:
    def __init__(self, entry: ModelSettings, fixed: float = FIXED_SECONDS, row: float = ROW_SECONDS) -> None:
        self.dimensions = DIMENSIONS
        self.device = entry.device
        self.fixed, self.row = fixed, row

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        deadline = time.perf_counter() + self.fixed + self.row * len(batch)
        spins = 0
        while time.perf_counter() < deadline:  # Python holding the GIL, as kernel launches do
            spins += 1
        time.sleep(SLEEP_SECONDS)  # the GIL released while the device finishes
        out = np.empty((len(batch), DIMENSIONS), dtype=np.float32)
        for row, text in enumerate(batch):
            seed = zlib.crc32(np.asarray(text.input_ids, dtype=np.int64).tobytes())
            out[row] = np.random.default_rng(seed).standard_normal(DIMENSIONS, dtype=np.float32)
        return out


@dataclass(frozen=True)
class StandinLoader:
    """The engine's loader for the stand-in (picklable, for worker processes)."""

    fixed_seconds: float = FIXED_SECONDS
    row_seconds: float = ROW_SECONDS

    def load_tokenizer(self, entry: ModelSettings) -> StandinTokenizer:
        return StandinTokenizer(entry)

    def load_model(self, entry: ModelSettings) -> StandinModel:
        return StandinModel(entry, self.fixed_seconds, self.row_seconds)


def limit(seconds: float, batch_size: int, loader: StandinLoader) -> dict[str, object]:
    """Full batches of 12-word texts back to back, and one text at a time, tokenizer included."""
    from bench.workload import texts

    entry = ModelSettings(name=NAME, base_model=NAME, device="cpu")
    tokenizer, model = loader.load_tokenizer(entry), loader.load_model(entry)
    sample = tokenizer.tokenize(texts(batch_size * 4, 12, seed=12), "")
    batches = [sample[i : i + batch_size] for i in range(0, len(sample), batch_size)]
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in batches:
            model.embed(batch)
            done += len(batch)
    rate = done / (time.perf_counter() - started)
    times = []
    for text in texts(100, 12, seed=99):
        began = time.perf_counter()
        model.embed(tokenizer.tokenize([text], ""))
        times.append(time.perf_counter() - began)
        if len(times) * 0.02 > seconds / 2:
            break
    return {"batched_12w": {"inputs_per_s": rate}, "single_12w_ms_p50": statistics.median(times) * 1000}


def serve(config: str, fixed_seconds: float, row_seconds: float) -> None:
    """The gateway as `python -m app serve` runs it, with the stand-in as its model."""
    import uvicorn

    from app.config import load_settings
    from app.engine.engine import EmbeddingEngine
    from app.framing import uvicorn_options
    from app.logs import configure_logging
    from app.server import create_app

    # By its module's name: run as `python -m bench.standin` this module is __main__, and
    # a worker process must find the loader's class under a name it can import.
    from bench.standin import StandinLoader as Loader

    settings = load_settings(config, os.environ)
    configure_logging(settings.server.log_level, settings.server.log_format)
    app = create_app(settings, engine=EmbeddingEngine(settings, Loader(fixed_seconds, row_seconds)))
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        access_log=False,
        **uvicorn_options(settings.server),  # type: ignore[arg-type]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    limit_parser = commands.add_parser("limit")
    limit_parser.add_argument("--seconds", type=float, default=8.0)
    limit_parser.add_argument("--batch-size", type=int, default=32)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--config", required=True)
    for sub in (limit_parser, serve_parser):
        sub.add_argument("--fixed-ms", type=float, default=FIXED_SECONDS * 1000, help="GIL held per forward")
        sub.add_argument("--row-ms", type=float, default=ROW_SECONDS * 1000, help="GIL held per row")
    args = parser.parse_args()
    fixed, row = args.fixed_ms / 1000, args.row_ms / 1000
    if args.command == "limit":
        print(json.dumps(limit(args.seconds, args.batch_size, StandinLoader(fixed, row))))
    else:
        serve(args.config, fixed, row)


if __name__ == "__main__":
    main()
