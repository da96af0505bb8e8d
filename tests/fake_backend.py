"""The one test backend: a model part the test steers through files, so it works the same
in a thread of the test process and in a worker process the engine spawned.

`FakeLoader(control, real=True)` wraps the real tokenizer and model of each entry (tiny or
MiniLM) and adds what tests need: a gate that holds the forward pass, a record of every
batch (with the pid that ran it), inputs that make their batch raise, kill the worker or
the model thread, and a row limit that raises out-of-memory. With `real=False` the parts
are fakes instead (a word-hash tokenizer, hash vectors), for engine tests without weights.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import numpy.typing as npt

from app.config import BatchSettings, EngineSettings, ModelSettings, Settings
from app.models.protocol import BatchMemoryError, EmbeddingModel, EmbeddingTokenizer, TokenizedText

if TYPE_CHECKING:
    from app.engine.engine import EmbeddingEngine

POLL = 0.002


class Fatal(BaseException):
    """Not an Exception: escapes the per-batch handler, as a crash of the model thread would."""


class Controls:
    """One model's control directory; every method is safe across processes."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.dir / name

    # -- the test's side ---------------------------------------------------------------------

    def close_gate(self) -> None:
        self._path("entered").unlink(missing_ok=True)
        self._path("closed").touch()

    def open_gate(self) -> None:
        self._path("closed").unlink(missing_ok=True)

    def wait_entered(self, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while not self._path("entered").exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True

    def entered(self) -> bool:
        """A forward pass has reached the gate since it was closed."""
        return self._path("entered").exists()

    def gate_closed(self) -> bool:
        return self._path("closed").exists()

    def set(self, name: str, value: object) -> None:
        """poison / kill: lists of token-id lists; memory_rows: int; fail: a message."""
        tmp = self._path(f".{name}.tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(self._path(name))

    def clear(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def batches(self) -> list[dict[str, object]]:
        """Every batch run so far: {"pid": ..., "threads": ..., "rows": [[ids...], ...]}, in order."""
        path = self._path("batches.jsonl")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def forget_batches(self) -> None:
        self._path("batches.jsonl").unlink(missing_ok=True)

    # -- the model's side --------------------------------------------------------------------

    def tokenize_calls(self) -> list[int]:
        """How many texts each call of the tokenizer part got, in order."""
        path = self._path("tokenize_calls")
        return [int(n) for n in path.read_text().split()] if path.exists() else []

    def forget_tokenize_calls(self) -> None:
        self._path("tokenize_calls").unlink(missing_ok=True)

    def get(self, name: str) -> object:
        path = self._path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def pass_gate(self) -> None:
        self._path("entered").touch()
        deadline = time.monotonic() + 30
        while self._path("closed").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(POLL)

    def record(self, batch: Sequence[TokenizedText]) -> None:
        torch = sys.modules.get("torch")  # the torch threads it ran on, where torch is loaded
        threads = torch.get_num_threads() if torch is not None else None
        line = json.dumps(
            {"pid": os.getpid(), "threads": threads, "rows": [list(t.input_ids) for t in batch]}
        )
        with self._path("batches.jsonl").open("a") as out:
            out.write(line + "\n")


class ControlledModel:
    """A model part (real or fake) run under the controls."""

    def __init__(
        self, inner: EmbeddingModel, controls: Controls, forward_seconds: tuple[float, float] = (0.0, 0.0)
    ) -> None:
        self.inner = inner
        self.controls = controls
        self.forward_seconds = forward_seconds
        self.dimensions = inner.dimensions
        self.device = inner.device

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        c = self.controls
        c.pass_gate()
        rows = {tuple(t.input_ids) for t in batch}
        if any(tuple(ids) in rows for ids in c.get("kill") or []):  # type: ignore[attr-defined]
            if multiprocessing.parent_process() is not None:
                os.kill(os.getpid(), signal.SIGKILL)  # a worker process dies as the OOM killer kills
            raise Fatal
        memory_rows = c.get("memory_rows")
        if isinstance(memory_rows, int) and len(batch) > memory_rows:
            raise BatchMemoryError("CUDA out of memory (simulated)")
        c.record(batch)
        fail = c.get("fail")
        if isinstance(fail, str):
            raise RuntimeError(fail)
        if any(tuple(ids) in rows for ids in c.get("poison") or []):  # type: ignore[attr-defined]
            raise RuntimeError("the forward pass failed")
        fixed, per_token = self.forward_seconds
        if fixed or per_token:  # a forward that takes longer the more padded tokens it has
            time.sleep(fixed + per_token * max(len(t.input_ids) for t in batch) * len(batch))
        return self.inner.embed(batch)


class ControlledTokenizer:
    """A tokenizer part (real or fake) that records how many texts each call gets."""

    def __init__(self, inner: EmbeddingTokenizer, controls: Controls) -> None:
        self.inner = inner
        self.controls = controls
        self.max_length = inner.max_length
        self.vocab_size = inner.vocab_size

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        with (self.controls.dir / "tokenize_calls").open("a") as out:
            out.write(f"{len(texts)}\n")
        return self.inner.tokenize(texts, instruction)

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.inner.decode_ids(ids)


class WordTokenizer:
    """Fake tokenizer: one id per word (a hash), a leading id 1, truncation to max_length."""

    def __init__(self, entry: ModelSettings, vocab_size: int = 1000) -> None:
        self.max_length = entry.max_length
        self.vocab_size = vocab_size

    def _id(self, word: str) -> int:
        return 2 + zlib.crc32(word.encode()) % (self.vocab_size - 2)

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        result = []
        for text in texts:
            ids = [1, *(self._id(w) for w in f"{instruction} {text}".split())]
            result.append(
                TokenizedText(tuple(ids[: self.max_length]), min(len(ids), self.max_length), len(ids))
            )
        return result

    def decode_ids(self, ids: Sequence[int]) -> str:
        return " ".join(f"w{i}" for i in ids)


class HashModel:
    """Fake model part: each input's vector is a function of its ids alone."""

    def __init__(self, dimensions: int, device: str) -> None:
        self.dimensions = dimensions
        # As the real backends resolve it on a host without CUDA.
        self.device = "cpu" if device.partition(":")[0] == "auto" else device

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        rows = []
        for t in batch:
            seed = zlib.crc32(np.asarray(t.input_ids, dtype=np.int64).tobytes())
            rows.append(np.random.default_rng(seed).standard_normal(self.dimensions))
        return np.asarray(rows, dtype=np.float32).reshape(len(batch), self.dimensions)


@dataclass(frozen=True)
class FakeLoader:
    """The engine's loader for tests (picklable, so worker processes get it too).

    `control`: a directory; each model gets `control/<name>` (see `controls()`).
    `load_closed` there holds loading until the test removes it; `loads` counts loads.
    """

    control: str
    real: bool = True
    dimensions: int = 8
    # The real tokenizer with hash vectors of `dimensions`: a forward pass that costs nothing.
    cheap_forward: bool = False
    # (fixed seconds, seconds per padded token) each forward pass sleeps: a model's speed.
    forward_seconds: tuple[float, float] = (0.0, 0.0)

    def controls(self, model: str) -> Controls:
        return Controls(Path(self.control) / model)

    def _loading(self, entry: ModelSettings, part: str) -> Controls:
        controls = self.controls(entry.name)
        with (controls.dir / "loads").open("a") as out:
            out.write(f"{part}\n")
        deadline = time.monotonic() + 60
        while (controls.dir / "load_closed").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return controls

    def load_tokenizer(self, entry: ModelSettings) -> EmbeddingTokenizer:
        controls = self._loading(entry, "tokenizer")
        if not self.real:
            return ControlledTokenizer(WordTokenizer(entry), controls)
        from app.models.registry import load_tokenizer

        return ControlledTokenizer(load_tokenizer(entry), controls)

    def load_model(self, entry: ModelSettings) -> EmbeddingModel:
        controls = self._loading(entry, "model")
        if not self.real or self.cheap_forward:
            return ControlledModel(HashModel(self.dimensions, entry.device), controls, self.forward_seconds)
        from app.models.registry import load_model

        return ControlledModel(load_model(entry), controls, self.forward_seconds)

    def loads(self, model: str) -> list[str]:
        path = self.controls(model).dir / "loads"
        return path.read_text().split() if path.exists() else []


def start_engine(
    tmp: Path | str,
    engine: EngineSettings,
    model: ModelSettings,
    *,
    batch: BatchSettings | None = None,
    dimensions: int = 8,
    forward_seconds: tuple[float, float] = (0.0, 0.0),
) -> tuple[EmbeddingEngine, Controls]:
    """An engine serving `model` on the fake parts (`real=False`), started and loaded, with
    token ids read natively and no batch recorded yet: what engine-level tests begin with."""
    from app.engine.engine import EmbeddingEngine  # not in worker processes, which import this module

    settings = Settings(engine=engine, models=[model], batch=batch or BatchSettings())
    settings = msgspec.structs.replace(
        settings, api=msgspec.structs.replace(settings.api, token_ids="native")
    )
    loader = FakeLoader(str(tmp), real=False, dimensions=dimensions, forward_seconds=forward_seconds)
    built = EmbeddingEngine(settings, loader)
    built.start()
    built.wait_loaded(120)
    assert built.ready, built.status()
    controls = loader.controls(model.name)
    controls.forget_batches()
    return built, controls


def wait_for_workers(
    engine: EmbeddingEngine, model: str, count: int, timeout: float = 60
) -> list[dict[str, object]]:
    """The model's interactive workers, once there are `count` and all serve (a second CPU
    worker of `devices = "auto"` joins after the first is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [w for w in engine.workers(model) if w["lane"] == "interactive"]
        if len(workers) == count and all(w["serving"] for w in workers):
            return workers
        time.sleep(0.05)
    raise AssertionError(engine.workers(model))
