"""The batch runner alone, with a stand-in engine: commits, resume after a crash, priority, TPM."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from app.auth.keys import KeyIdentity
from app.batches.runner import BatchRunner, key_to_json
from app.batches.store import BatchRecord, BatchStore, FileRecord, Progress, now
from app.config import BatchSettings


@dataclass
class Result:
    vectors: npt.NDArray[np.float32]
    prompt_tokens: int


class Engine:
    """Embeds each text as [len(text), 0, 0, 0]; records when each call was made."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, object]] = []
        self.priorities: list[str] = []

    async def embed(
        self,
        model: str,
        raw_input: object,
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
        request_id: str = "-",
        priority: str = "interactive",
    ) -> Result:
        self.calls.append((time.monotonic(), raw_input))
        self.priorities.append(priority)
        await asyncio.sleep(0)
        texts = raw_input if isinstance(raw_input, list) else [raw_input]
        vectors = np.array([[len(str(t)), 0, 0, 0] for t in texts], dtype=np.float32)
        return Result(vectors, sum(len(str(t)) for t in texts))


class CrashingStore(BatchStore):
    """Dies (as a killed process would) after the output of its Nth chunk is written."""

    def __init__(self, db: Path, files: Path, crash_at: int) -> None:
        super().__init__(db, files)
        self.commits = 0
        self.crash_at = crash_at

    def commit_progress(self, batch_id: str, progress: Progress) -> None:
        self.commits += 1
        if self.commits == self.crash_at:
            raise KeyboardInterrupt("killed")
        super().commit_progress(batch_id, progress)


def make_job(store: BatchStore, lines: int) -> str:
    path = store.new_file_path("file-in")
    path.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "m", "input": "x" * (i + 1)},
                }
            )
            + "\n"
            for i in range(lines)
        )
    )
    store.add_file(
        FileRecord("file-in", "me", "batch", "in.jsonl", path.stat().st_size, lines, now(), str(path))
    )
    store.add_batch(
        BatchRecord(
            id="batch_1",
            owner="me",
            key=key_to_json(KeyIdentity("me")),
            input_file_id="file-in",
            endpoint="/v1/embeddings",
            completion_window="24h",
            status="validating",
            created_at=now(),
            expires_at=now() + 3600,
        )
    )
    return "batch_1"


def outputs(store: BatchStore, batch_id: str) -> list[dict[str, object]]:
    record = store.get_batch(batch_id)
    assert record is not None and record.output_file_id is not None
    file = store.get_file("me", record.output_file_id)
    assert file is not None
    return [json.loads(line) for line in Path(file.path).read_text().splitlines()]


def test_a_crash_between_writing_and_committing_duplicates_nothing(tmp_path: Path) -> None:
    settings = BatchSettings(chunk_inputs=4)
    crashing = CrashingStore(tmp_path / "db", tmp_path / "files", crash_at=3)
    batch_id = make_job(crashing, 20)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(BatchRunner(crashing, Engine(), settings).run_until_idle())
    crashing.close()
    # Eight lines committed, four more written to the output file but not committed.
    out = tmp_path / "files" / f"{batch_id}.output.jsonl"
    assert len(out.read_text().splitlines()) == 12
    store = BatchStore(tmp_path / "db", tmp_path / "files")
    assert store.get_batch(batch_id).completed == 8  # type: ignore[union-attr]
    engine = Engine()
    asyncio.run(BatchRunner(store, engine, settings).run_until_idle())
    assert len(engine.calls) == 12  # only the lines not committed ran again
    lines = outputs(store, batch_id)
    assert Counter(line["custom_id"] for line in lines) == Counter(f"r{i}" for i in range(20))
    for line in lines:
        i = int(str(line["custom_id"])[1:])
        assert line["response"]["body"]["data"][0]["embedding"][0] == i + 1  # type: ignore[index]
    record = store.get_batch(batch_id)
    assert record is not None and (record.status, record.completed, record.failed) == ("completed", 20, 0)


def test_the_runner_sends_every_line_at_background_priority(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "db", tmp_path / "files")
    make_job(store, 3)
    engine = Engine()
    asyncio.run(BatchRunner(store, engine, BatchSettings()).run_until_idle())
    assert engine.priorities == ["background"] * 3


class Budget:
    def __init__(self, wait_until: float) -> None:
        self.wait_until = wait_until
        self.charged: list[tuple[str, int]] = []

    async def tokens_reset_in(self, key: KeyIdentity) -> float:
        return max(0.0, self.wait_until - time.monotonic())

    async def charge_tokens(self, key: KeyIdentity, tokens: int) -> None:
        self.charged.append((key.name, tokens))


def test_tokens_are_charged_to_the_owner_and_an_empty_window_is_waited_out(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "db", tmp_path / "files")
    make_job(store, 5)
    budget = Budget(time.monotonic() + 0.3)
    engine = Engine()
    asyncio.run(BatchRunner(store, engine, BatchSettings(chunk_inputs=2), budget=budget).run_until_idle())
    assert min(t for t, _ in engine.calls) >= budget.wait_until
    assert {name for name, _ in budget.charged} == {"me"}
    assert sum(tokens for _, tokens in budget.charged) == sum(range(1, 6))
    assert store.get_batch("batch_1").tokens == 15  # type: ignore[union-attr]


def test_a_resumed_job_waits_for_the_models_to_load(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "db", tmp_path / "files")
    make_job(store, 3)
    loaded_at = time.monotonic() + 0.6
    engine = Engine()
    runner = BatchRunner(store, engine, BatchSettings(), ready=lambda: time.monotonic() >= loaded_at)
    asyncio.run(runner.run_until_idle())
    assert len(engine.calls) == 3 and min(t for t, _ in engine.calls) >= loaded_at
    assert store.get_batch("batch_1").completed == 3  # type: ignore[union-attr]
