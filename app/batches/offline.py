"""`python -m app batch INPUT.jsonl -o OUTPUT.jsonl`: a batch input file run in this process.

The same line formats as the Batch API (app.batches.lines). Successful lines are appended to
OUTPUT, failed ones to OUTPUT's error file (`<output stem>.errors.jsonl`, rewritten each
run); each chunk is flushed and synced before the next, and a run skips the custom_ids
already in OUTPUT (a line cut short by a kill is dropped first), so an interrupted run is
resumed by running the same command again. Failed lines are tried again by the next run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np
import numpy.typing as npt

from app.auth.keys import KeyIdentity
from app.batches.lines import Embedder, LineResult, ParsedLine, problem_line, read_chunk, run_line

OFFLINE = KeyIdentity("offline")
# Chunks in flight: the next one is tokenized and queued while the model runs the current.
_IN_FLIGHT = 2


@dataclass
class Summary:
    done_before: int = 0
    completed: int = 0
    failed: int = 0
    tokens: int = 0


def errors_path(output: Path) -> Path:
    return output.with_name(output.stem + ".errors.jsonl")


def done_custom_ids(output: Path) -> set[str]:
    """The custom_ids OUTPUT already holds; a last line without its newline is cut off."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with output.open("r+b") as handle:
            handle.truncate(keep)
    return {json.loads(line)["custom_id"] for line in data[:keep].splitlines() if line.strip()}


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


class Progress:
    """One line on stderr: lines done, tokens per second, time left."""

    def __init__(self, total: int, stream: TextIO, done: int) -> None:
        self._total, self._stream, self._start_done = total, stream, done
        self._done, self._tokens = done, 0
        self._started = self._shown = time.monotonic()

    def advance(self, lines: int, tokens: int) -> None:
        self._done += lines
        self._tokens += tokens
        now = time.monotonic()
        if now - self._shown >= 0.2 or self._done >= self._total:
            self._shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = (self._done - self._start_done) / elapsed
        left = (self._total - self._done) / rate if rate > 0 else math.inf
        eta = "--:--" if math.isinf(left) else f"{int(left // 60):02d}:{int(left % 60):02d}"
        share = self._done / self._total if self._total else 1.0
        bar = "#" * int(share * 30)
        speed = f"{self._tokens / elapsed:,.0f} tokens/s"
        self._stream.write(f"\r[{bar:<30}] {self._done}/{self._total} lines  {speed}  ETA {eta} ")
        self._stream.flush()

    def close(self) -> None:
        self._show(time.monotonic())
        self._stream.write("\n")
        self._stream.flush()


async def run_file(
    engine: Embedder, source: Path, output: Path, *, chunk_inputs: int, progress: TextIO | None = None
) -> Summary:
    done = done_custom_ids(output)
    summary = Summary(done_before=len(done))
    bar = Progress(count_lines(source), progress, len(done)) if progress is not None else None
    seen: set[str] = set()
    with source.open("rb") as src, output.open("ab") as out, errors_path(output).open("wb") as err:
        pending: deque[tuple[list[ParsedLine], asyncio.Future[list[LineResult]]]] = deque()
        while True:
            chunk, _ = read_chunk(src, chunk_inputs)
            if chunk:
                todo = [p for p in chunk if p.custom_id not in done]  # done ones count from the start
                pending.append((todo, asyncio.ensure_future(_run_chunk(engine, todo, seen))))
            if pending and (len(pending) >= _IN_FLIGHT or not chunk):
                _, task = pending.popleft()
                results = await task
                for result in results:
                    (out if result.ok else err).write(result.line)
                    summary.completed += result.ok
                    summary.failed += not result.ok
                    summary.tokens += result.tokens
                await asyncio.to_thread(_sync, out, err)
                if bar is not None:
                    bar.advance(len(results), sum(r.tokens for r in results))
            if not chunk and not pending:
                break
    if bar is not None:
        bar.close()
    if summary.failed == 0:
        errors_path(output).unlink(missing_ok=True)
    return summary


async def _run_chunk(engine: Embedder, chunk: list[ParsedLine], seen: set[str]) -> list[LineResult]:
    runs: list[asyncio.Future[LineResult]] = []
    for parsed in chunk:
        if parsed.custom_id is not None and parsed.custom_id in seen:
            runs.append(
                _ready(problem_line(parsed.custom_id, "duplicate_custom_id", "This custom_id is repeated."))
            )
            continue
        if parsed.custom_id is not None:
            seen.add(parsed.custom_id)
        runs.append(asyncio.ensure_future(run_line(parsed, OFFLINE, engine)))
    return list(await asyncio.gather(*runs))


def _ready(result: LineResult) -> asyncio.Future[LineResult]:
    future: asyncio.Future[LineResult] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


def _sync(*handles: IO[bytes]) -> None:
    for handle in handles:
        handle.flush()
        os.fsync(handle.fileno())


# -- vectors beside the JSONL -----------------------------------------------------------------


def read_vectors(output: Path) -> tuple[list[str], list[int], list[npt.NDArray[np.float32]]]:
    """Every vector in OUTPUT, in its order: (custom_id, index within the line, vector)."""
    ids: list[str] = []
    indices: list[int] = []
    vectors: list[npt.NDArray[np.float32]] = []
    with output.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            line: dict[str, Any] = json.loads(raw)
            for item in line["response"]["body"]["data"]:
                embedding = item["embedding"]
                if isinstance(embedding, str):
                    vector = np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
                else:
                    vector = np.asarray(embedding, dtype=np.float32)
                ids.append(line["custom_id"])
                indices.append(item["index"])
                vectors.append(vector)
    return ids, indices, vectors


def write_npy(output: Path, target: Path) -> int:
    """One float32 row per vector, in OUTPUT's order (line by line, input by input)."""
    _, _, vectors = read_vectors(output)
    if len({v.shape[0] for v in vectors}) > 1:
        raise ValueError("the output's vectors have different dimensions; .npy needs one; use Parquet")
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    np.save(target, matrix)
    return len(vectors)


def write_parquet(output: Path, target: Path) -> int:
    """Columns custom_id, index (within its line) and embedding (list of float32)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("Parquet output needs pyarrow: pip install 'llm2vec-gateway[parquet]'") from None
    ids, indices, vectors = read_vectors(output)
    table = pa.table(
        {
            "custom_id": pa.array(ids, pa.string()),
            "index": pa.array(indices, pa.int32()),
            "embedding": pa.array([v.tolist() for v in vectors], pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, target)
    return len(vectors)
