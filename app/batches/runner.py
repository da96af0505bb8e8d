"""The background runner: one job at a time, a chunk of lines at a time, below interactive load.

The runner puts at most `batch.chunk_inputs` inputs in flight and waits for all of them.
They go through the engine at background priority: the model queue's background lane, run
by the model's background worker at the lowest CPU priority (or, with `batch.worker =
"shared"`, by its workers only while no interactive input waits). Tokens are charged to
the owner's TPM after each chunk, and while the key has no tokens left in its window the
runner waits for the window to reset (the job is never failed for it).

Each chunk: run its lines, append the output and error lines to the job's two files, sync
them, then commit the progress in one transaction (app.batches.store). A restart truncates
both files to the committed sizes and resumes at the committed line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

from app.auth.keys import KeyIdentity
from app.batches.lines import Embedder, LineResult, ParsedLine, problem_line, read_chunk, run_line
from app.batches.store import BatchRecord, BatchStatus, BatchStore, FileRecord, Progress, dumps, new_id, now
from app.config import BatchSettings

logger = logging.getLogger(__name__)


class TokenBudget(Protocol):
    """The rate limiter's side the runner uses (app.api.ratelimit.RateLimiter)."""

    async def tokens_reset_in(self, key: KeyIdentity) -> float: ...
    async def charge_tokens(self, key: KeyIdentity, tokens: int) -> None: ...


def key_to_json(key: KeyIdentity) -> str:
    models = sorted(key.models) if key.models is not None else None
    return dumps({"name": key.name, "rpm": key.rpm, "tpm": key.tpm, "models": models})


def key_from_json(text: str) -> KeyIdentity:
    data = json.loads(text)
    models = frozenset(data["models"]) if data.get("models") is not None else None
    return KeyIdentity(data["name"], data.get("rpm"), data.get("tpm"), models)


class _Stop(Exception):
    """The job left in_progress (cancelled or expired) between two chunks."""

    def __init__(self, status: BatchStatus) -> None:
        self.status = status


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        engine: Embedder,
        settings: BatchSettings,
        *,
        budget: TokenBudget | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._settings = settings
        self._budget = budget
        self._ready = ready
        self._wake = asyncio.Event()
        self._cancels: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def notify(self, cancelled: str | None = None) -> None:
        """A job was created (or cancelled): look at the queue again."""
        if cancelled is not None:
            self._cancels.add(cancelled)
        self._wake.set()

    async def run_until_idle(self) -> None:
        """Run every queued job to its end, then return (for in-process use and tests)."""
        while await self._step():
            pass

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("batch runner error; retrying shortly")
                await asyncio.sleep(1.0)
                continue
            if not busy:
                await self._wake.wait()

    async def _step(self) -> bool:
        """Settle cancelled jobs, then run the oldest active one. False when none is left."""
        jobs = await asyncio.to_thread(self._store.active_batches)
        for job in jobs:
            if job.status == "cancelling":
                await self._settle(job, "cancelled")
        todo = [j for j in jobs if j.status != "cancelling"]
        if not todo:
            return False
        job = todo[0]
        try:
            await self._run(job)
        except _Stop as stop:
            fresh = await asyncio.to_thread(self._store.get_batch, job.id)
            await self._settle(fresh or job, stop.status)
        except Exception as exc:
            logger.exception("batch %s failed", job.id)
            await self._fail(job, "server_error", f"The batch could not be processed ({type(exc).__name__}).")
        return True

    # -- one job -----------------------------------------------------------------------------

    async def _run(self, job: BatchRecord) -> None:
        source = await asyncio.to_thread(self._store.get_file, job.owner, job.input_file_id)
        if source is None or not Path(source.path).exists():
            await self._fail(job, "file_not_found", f"The input file {job.input_file_id} no longer exists.")
            return
        if job.status == "validating":
            await asyncio.to_thread(
                self._store.update_batch,
                job.id,
                only_from=("validating",),
                status="in_progress",
                in_progress_at=now(),
                total=source.lines,
            )
            job.status, job.total = "in_progress", source.lines
        if job.status == "in_progress":
            await self._run_lines(job, Path(source.path))
        await self._settle(job, "completed")

    async def _run_lines(self, job: BatchRecord, source: Path) -> None:
        key = key_from_json(job.key)
        out_path, err_path = self._output_paths(job.id)
        with (
            source.open("rb") as src,
            _reopen(out_path, job.output_bytes) as out,
            _reopen(err_path, job.error_bytes) as err,
        ):
            src.seek(job.input_offset)
            line_no, offset = job.next_line, job.input_offset
            out_bytes, err_bytes = job.output_bytes, job.error_bytes
            while True:
                await self._check_stop(job)
                chunk, consumed = read_chunk(src, self._settings.chunk_inputs)
                if not chunk:
                    return
                await self._wait_for_models(job)
                await self._wait_for_tokens(job, key)
                results = await self._run_chunk(job, chunk, key)
                progress = Progress(line_no + len(chunk), offset + consumed, out_bytes, err_bytes)
                for result, parsed in zip(results, chunk, strict=True):
                    target = out if result.ok else err
                    target.write(result.line)
                    if result.ok:
                        progress.output_bytes += len(result.line)
                        progress.completed += 1
                    else:
                        progress.error_bytes += len(result.line)
                        progress.failed += 1
                    progress.tokens += result.tokens
                    if parsed.custom_id is not None:
                        progress.custom_ids.append(parsed.custom_id)
                await asyncio.to_thread(_sync, out, err)
                await asyncio.to_thread(self._store.commit_progress, job.id, progress)
                if self._budget is not None and progress.tokens:
                    await self._budget.charge_tokens(key, progress.tokens)
                line_no, offset = progress.next_line, progress.input_offset
                out_bytes, err_bytes = progress.output_bytes, progress.error_bytes

    async def _run_chunk(
        self, job: BatchRecord, chunk: list[ParsedLine], key: KeyIdentity
    ) -> list[LineResult]:
        """Run a chunk's lines together (the batcher merges them); a custom_id already done
        in this job, or twice in the chunk, fails as a duplicate."""
        ids = [p.custom_id for p in chunk if p.custom_id is not None]
        seen = await asyncio.to_thread(self._store.seen_custom_ids, job.id, ids)
        runs: list[asyncio.Future[LineResult]] = []
        for parsed in chunk:
            if parsed.custom_id is not None and parsed.custom_id in seen:
                done: asyncio.Future[LineResult] = asyncio.get_running_loop().create_future()
                done.set_result(
                    problem_line(
                        parsed.custom_id, "duplicate_custom_id", "This custom_id is already in the batch."
                    )
                )
                runs.append(done)
                continue
            if parsed.custom_id is not None:
                seen.add(parsed.custom_id)
            runs.append(asyncio.ensure_future(run_line(parsed, key, self._engine, "background")))
        try:
            return list(await asyncio.gather(*runs))
        except BaseException:
            for run in runs:
                run.cancel()
            raise

    async def _check_stop(self, job: BatchRecord) -> None:
        if job.id in self._cancels:
            self._cancels.discard(job.id)
            raise _Stop("cancelled")
        if job.expires_at is not None and now() >= job.expires_at:
            raise _Stop("expired")
        # Other jobs cancelled while this one runs are settled between its chunks.
        for other in list(self._cancels):
            self._cancels.discard(other)
            record = await asyncio.to_thread(self._store.get_batch, other)
            if record is not None and record.status == "cancelling":
                await self._settle(record, "cancelled")

    async def _wait_for_models(self, job: BatchRecord) -> None:
        """After a restart the job resumes before the models are loaded: wait for them rather
        than fail its lines as 503s."""
        while self._ready is not None and not self._ready():
            await asyncio.sleep(0.5)
            await self._check_stop(job)

    async def _wait_for_tokens(self, job: BatchRecord, key: KeyIdentity) -> None:
        while self._budget is not None:
            wait = await self._budget.tokens_reset_in(key)
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, 1.0))
            await self._check_stop(job)

    # -- endings -----------------------------------------------------------------------------

    def _output_paths(self, batch_id: str) -> tuple[Path, Path]:
        self._store.files_dir.mkdir(parents=True, exist_ok=True)
        return (
            self._store.files_dir / f"{batch_id}.output.jsonl",
            self._store.files_dir / f"{batch_id}.errors.jsonl",
        )

    async def _settle(self, job: BatchRecord, status: BatchStatus) -> None:
        """Finalize: the committed output and error lines become files, the status final."""
        stamp = now()
        if status == "completed":
            await asyncio.to_thread(
                self._store.update_batch, job.id, status="finalizing", finalizing_at=stamp
            )
        fresh = await asyncio.to_thread(self._store.get_batch, job.id) or job
        out_path, err_path = self._output_paths(job.id)
        outputs: list[FileRecord] = []
        ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for field, path, size, lines, suffix in (
            ("output_file_id", out_path, fresh.output_bytes, fresh.completed, "output"),
            ("error_file_id", err_path, fresh.error_bytes, fresh.failed, "error"),
        ):
            await asyncio.to_thread(_truncate, path, size)
            if size == 0:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            file_id = new_id("file-")
            ids[field] = file_id
            outputs.append(
                FileRecord(
                    file_id,
                    job.owner,
                    "batch_output",
                    f"{job.id}_{suffix}.jsonl",
                    size,
                    lines,
                    stamp,
                    str(path),
                )
            )
        stamp_field = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[
            status
        ]
        await asyncio.to_thread(self._store.settle, job.id, status, outputs, **ids, **{stamp_field: stamp})
        logger.info("batch %s %s: %d completed, %d failed", job.id, status, fresh.completed, fresh.failed)

    async def _fail(self, job: BatchRecord, code: str, message: str) -> None:
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        await asyncio.to_thread(
            self._store.settle, job.id, "failed", [], failed_at=now(), errors=dumps(errors)
        )


@contextlib.contextmanager
def _reopen(path: Path, committed: int) -> Iterator[IO[bytes]]:
    """Open an output file for appending after its committed size, dropping anything past it."""
    path.touch()
    with path.open("r+b") as handle:
        handle.truncate(committed)
        handle.seek(committed)
        yield handle


def _sync(*handles: IO[bytes]) -> None:
    for handle in handles:
        handle.flush()
        os.fsync(handle.fileno())


def _truncate(path: Path, size: int) -> None:
    if path.exists():
        with path.open("r+b") as handle:
            handle.truncate(size)
