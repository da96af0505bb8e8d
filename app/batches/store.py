"""Files and batch jobs in SQLite, file contents in a directory beside it.

One connection, guarded by a lock; callers on the event loop go through `asyncio.to_thread`.
The database is created on the first upload, so a gateway nobody sends a batch to leaves
nothing on disk. A job's progress (next input line, output and error file sizes, counts,
the custom_ids done) is committed in one transaction per chunk of lines, after the chunk's
output lines are written and synced: a restart truncates the output back to the committed
size and goes on from the committed line, so no line is lost or written twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
# A runner picks these up (again, after a restart).
ACTIVE: tuple[BatchStatus, ...] = ("validating", "in_progress", "finalizing", "cancelling")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT,
    errors TEXT,
    created_at INTEGER NOT NULL,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, expires_at INTEGER, expired_at INTEGER,
    output_file_id TEXT, error_file_id TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    next_line INTEGER NOT NULL DEFAULT 0,
    input_offset INTEGER NOT NULL DEFAULT 0,
    output_bytes INTEGER NOT NULL DEFAULT 0,
    error_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batch_custom_ids (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
) WITHOUT ROWID;
"""


def data_dir(env: dict[str, str]) -> Path:
    """The per-user default place for the store: $XDG_DATA_HOME or ~/.local/share."""
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llm2vec-gateway"


def open_store(db_path: str, files_dir: str, env: dict[str, str]) -> BatchStore:
    """The configured store; "" for either means the per-user default."""
    base = data_dir(env)
    return BatchStore(
        Path(db_path) if db_path else base / "batches.sqlite3",
        Path(files_dir) if files_dir else base / "files",
    )


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass
class FileRecord:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    lines: int
    created_at: int
    path: str


@dataclass
class BatchRecord:
    id: str
    owner: str
    # The owner's identity when the job was made (JSON: name, rpm, tpm, models).
    key: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: BatchStatus
    created_at: int
    metadata: str | None = None
    errors: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    expires_at: int | None = None
    expired_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    next_line: int = 0
    input_offset: int = 0
    output_bytes: int = 0
    error_bytes: int = 0


@dataclass
class Progress:
    """What one chunk of lines moved a job forward by; committed in one transaction."""

    next_line: int
    input_offset: int
    output_bytes: int
    error_bytes: int
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    custom_ids: list[str] = field(default_factory=list)


_BATCH_COLUMNS = [f.name for f in fields(BatchRecord)]
_FILE_COLUMNS = [f.name for f in fields(FileRecord)]


class BatchStore:
    def __init__(self, db_path: Path, files_dir: Path) -> None:
        self.db_path = db_path
        self.files_dir = files_dir
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- connection --------------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not create and not self.db_path.exists():
                return None
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self.files_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _tx(self, create: bool = False) -> Iterator[sqlite3.Connection | None]:
        with self._lock:
            db = self._connect(create)
            if db is None:
                yield None
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- files -------------------------------------------------------------------------------

    def new_file_path(self, file_id: str) -> Path:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        return self.files_dir / f"{file_id}.jsonl"

    def add_file(self, record: FileRecord) -> None:
        with self._tx(create=True) as db:
            assert db is not None
            _insert(db, "files", _FILE_COLUMNS, record)

    def get_file(self, owner: str, file_id: str) -> FileRecord | None:
        with self._tx() as db:
            if db is None:
                return None
            row = db.execute(
                f"SELECT {','.join(_FILE_COLUMNS)} FROM files WHERE id = ? AND owner = ?", (file_id, owner)
            ).fetchone()
        return FileRecord(*row) if row else None

    def list_files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[FileRecord], bool]:
        where, args = "owner = ?", [owner]
        if purpose:
            where += " AND purpose = ?"
            args.append(purpose)
        rows = self._page("files", _FILE_COLUMNS, where, args, after, limit, ascending)
        return [FileRecord(*r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self._tx() as db:
            if db is None:
                return False
            row = db.execute("SELECT path FROM files WHERE id = ? AND owner = ?", (file_id, owner)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(row[0])
        return True

    # -- batches -----------------------------------------------------------------------------

    def add_batch(self, record: BatchRecord) -> None:
        with self._tx(create=True) as db:
            assert db is not None
            _insert(db, "batches", _BATCH_COLUMNS, record)

    def get_batch(self, batch_id: str, owner: str | None = None) -> BatchRecord | None:
        with self._tx() as db:
            if db is None:
                return None
            query = f"SELECT {','.join(_BATCH_COLUMNS)} FROM batches WHERE id = ?"
            args: list[Any] = [batch_id]
            if owner is not None:
                query += " AND owner = ?"
                args.append(owner)
            row = db.execute(query, args).fetchone()
        return BatchRecord(*row) if row else None

    def list_batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        rows = self._page("batches", _BATCH_COLUMNS, "owner = ?", [owner], after, limit, ascending=False)
        return [BatchRecord(*r) for r in rows[:limit]], len(rows) > limit

    def active_batches(self) -> list[BatchRecord]:
        """Jobs not yet settled, oldest first."""
        with self._tx() as db:
            if db is None:
                return []
            marks = ",".join("?" * len(ACTIVE))
            rows = db.execute(
                f"SELECT {','.join(_BATCH_COLUMNS)} FROM batches WHERE status IN ({marks}) ORDER BY seq",
                ACTIVE,
            ).fetchall()
        return [BatchRecord(*r) for r in rows]

    def update_batch(self, batch_id: str, *, only_from: Iterable[str] = (), **changes: Any) -> bool:
        """Set fields; with `only_from`, only while the job's status is one of those."""
        columns = ", ".join(f"{name} = ?" for name in changes)
        query = f"UPDATE batches SET {columns} WHERE id = ?"
        args = [*changes.values(), batch_id]
        allowed = list(only_from)
        if allowed:
            query += f" AND status IN ({','.join('?' * len(allowed))})"
            args.extend(allowed)
        with self._tx() as db:
            assert db is not None
            return db.execute(query, args).rowcount > 0

    def commit_progress(self, batch_id: str, progress: Progress) -> None:
        with self._tx() as db:
            assert db is not None
            db.execute(
                "UPDATE batches SET next_line = ?, input_offset = ?, output_bytes = ?, error_bytes = ?, "
                "completed = completed + ?, failed = failed + ?, tokens = tokens + ? WHERE id = ?",
                (
                    progress.next_line,
                    progress.input_offset,
                    progress.output_bytes,
                    progress.error_bytes,
                    progress.completed,
                    progress.failed,
                    progress.tokens,
                    batch_id,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO batch_custom_ids (batch_id, custom_id) VALUES (?, ?)",
                [(batch_id, c) for c in progress.custom_ids],
            )

    def seen_custom_ids(self, batch_id: str, custom_ids: list[str]) -> set[str]:
        with self._tx() as db:
            assert db is not None
            seen: set[str] = set()
            for start in range(0, len(custom_ids), 500):
                part = custom_ids[start : start + 500]
                rows = db.execute(
                    "SELECT custom_id FROM batch_custom_ids WHERE batch_id = ? "
                    f"AND custom_id IN ({','.join('?' * len(part))})",
                    [batch_id, *part],
                ).fetchall()
                seen.update(r[0] for r in rows)
            return seen

    def settle(self, batch_id: str, status: BatchStatus, outputs: list[FileRecord], **changes: Any) -> None:
        """The job's output files and its final status, in one transaction."""
        with self._tx() as db:
            assert db is not None
            for record in outputs:
                _insert(db, "files", _FILE_COLUMNS, record)
            changes["status"] = status
            columns = ", ".join(f"{name} = ?" for name in changes)
            db.execute(f"UPDATE batches SET {columns} WHERE id = ?", [*changes.values(), batch_id])
            db.execute("DELETE FROM batch_custom_ids WHERE batch_id = ?", (batch_id,))

    # -- helpers -----------------------------------------------------------------------------

    def _page(
        self,
        table: str,
        columns: list[str],
        where: str,
        args: list[Any],
        after: str | None,
        limit: int,
        ascending: bool,
    ) -> list[tuple[Any, ...]]:
        """One page (and one row more, to tell whether there are more) after the `after` id."""
        with self._tx() as db:
            if db is None:
                return []
            order, cmp = ("ASC", ">") if ascending else ("DESC", "<")
            if after:
                where += f" AND seq {cmp} COALESCE((SELECT seq FROM {table} WHERE id = ?), -1)"
                args = [*args, after]
            rows: list[tuple[Any, ...]] = db.execute(
                f"SELECT {','.join(columns)} FROM {table} WHERE {where} ORDER BY seq {order} LIMIT ?",
                [*args, limit + 1],
            ).fetchall()
        return rows


def _insert(db: sqlite3.Connection, table: str, columns: list[str], record: Any) -> None:
    values = [getattr(record, c) for c in columns]
    db.execute(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({','.join('?' * len(columns))})", values)


def now() -> int:
    return int(time.time())


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
