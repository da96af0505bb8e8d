"""The managed key file: each key's SHA-256, name, limits, models and creation time; never a key.

    {"keys": [{"name": "team-a", "sha256": "<64 hex>", "rpm": 60, "tpm": null,
               "models": ["all-MiniLM-L6-v2"], "created": "2025-01-31T12:00:00Z"}]}

`python -m app keys` changes it under an exclusive lock (a `.lock` file beside it), writing a
temporary file in the same folder and `os.replace`-ing it in, mode 0600: a reader sees the
old file or the new one, never half of one. The server polls it (`KeyFileWatcher`) and swaps
in a new key set when it changes; requests already authenticated are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from app.auth.keys import KeyStore, StoredKey, digest, generate_key, identity

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")


class KeyFileError(Exception):
    """A key file that cannot be read or changed; the message says why."""


class KeyRecord(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    sha256: str
    rpm: int | None = None
    tpm: int | None = None
    models: list[str] = []
    created: datetime


class _KeyFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    keys: list[KeyRecord] = []


Signature = tuple[int, int, int] | None


def signature(path: Path) -> Signature:
    """What changes when the file does (os.replace gives a new inode); None when absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_key_file(path: Path) -> list[KeyRecord]:
    """The file's records; a missing or empty file holds none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    if not raw.strip():
        return []
    try:
        records = msgspec.json.decode(raw, type=_KeyFile).keys
    except msgspec.DecodeError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    names: set[str] = set()
    for i, record in enumerate(records):
        if not _HEX.fullmatch(record.sha256):
            raise KeyFileError(f"{path}: keys[{i}].sha256: expected 64 lowercase hex digits")
        if record.name in names:
            raise KeyFileError(f"{path}: keys[{i}]: the name {record.name!r} is used twice")
        names.add(record.name)
    return records


def stored_keys(records: list[KeyRecord]) -> list[StoredKey]:
    return [StoredKey(r.sha256, identity(r.name, r.rpm, r.tpm, r.models)) for r in records]


def _write(path: Path, records: list[KeyRecord]) -> None:
    data = msgspec.json.format(msgspec.json.encode(_KeyFile(keys=records)), indent=2) + b"\n"
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A folder made here (e.g. ~/.local/state/llm2vec-gateway) is the owner's alone.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_key(
    path: Path,
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    models: list[str] | None = None,
    taken: frozenset[str] = frozenset(),
) -> str:
    """Add a key named `name` and return it: the only time it exists outside a client."""
    if not _NAME.fullmatch(name):
        raise KeyFileError(f"invalid name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    if min(rpm or 0, tpm or 0) < 0:
        raise KeyFileError("rpm and tpm must be 0 (unlimited) or more")
    if name in taken:
        raise KeyFileError(f"the name {name!r} is already used by a configured key")
    key = generate_key()
    with _locked(path):
        records = read_key_file(path)
        if any(r.name == name for r in records):
            raise KeyFileError(f"a key named {name!r} already exists in {path}")
        record = KeyRecord(
            name=name,
            sha256=digest(key),
            rpm=rpm,
            tpm=tpm,
            models=sorted(set(models or [])),
            created=datetime.now(UTC).replace(microsecond=0),
        )
        _write(path, [*records, record])
    return key


def revoke_key(path: Path, name: str) -> None:
    with _locked(path):
        records = read_key_file(path)
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            raise KeyFileError(f"no key named {name!r} in {path}")
        _write(path, kept)


class KeyFileWatcher:
    """Polls the key file; on a change, installs a new store of `base` plus the file's keys.

    A version that cannot be read is logged and the keys in force stay in force.
    """

    def __init__(self, path: Path, poll_seconds: float, base: list[StoredKey], seen: Signature) -> None:
        self._path = path
        self._poll = poll_seconds
        self._base = base
        self._seen = seen

    async def run(self, install: Callable[[KeyStore], None]) -> None:
        while True:
            await asyncio.sleep(self._poll)
            await self.check(install)

    async def check(self, install: Callable[[KeyStore], None]) -> None:
        current = await asyncio.to_thread(signature, self._path)
        if current == self._seen:
            return
        self._seen = current
        try:
            records = await asyncio.to_thread(read_key_file, self._path)
        except KeyFileError as exc:
            logger.error("key file not reloaded, the keys in force stay: %s", exc)
            return
        install(KeyStore(self._base + stored_keys(records)))
        logger.info("key file reloaded: %d keys", len(records))
