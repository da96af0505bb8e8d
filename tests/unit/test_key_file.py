"""The key file holds digests only, is written atomically with mode 0600, and reloads."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from app.auth.key_file import (
    KeyFileError,
    KeyFileWatcher,
    create_key,
    read_key_file,
    revoke_key,
    signature,
)
from app.auth.keys import KeyIdentity, KeyStore, StoredKey, digest
from app.config import AuthSettings
from app.server import _key_store


def test_create_stores_the_digest_and_policy_never_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = create_key(path, "team-a", rpm=3, tpm=1000, models=["m2", "m1", "m1"])
    assert key.startswith("sk-") and len(key) >= 40
    text = path.read_text()
    assert key not in text and key[3:] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (record,) = json.loads(text)["keys"]
    assert record["sha256"] == digest(key)
    assert (record["name"], record["rpm"], record["tpm"], record["models"]) == (
        "team-a",
        3,
        1000,
        ["m1", "m2"],
    )
    assert record["created"].endswith("Z")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["keys.json"]


def test_names_are_unique_and_revoke_removes_only_that_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    create_key(path, "a")
    create_key(path, "b")
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path, "a")
    with pytest.raises(KeyFileError, match="configured key"):
        create_key(path, "env", taken=frozenset({"env"}))
    with pytest.raises(KeyFileError, match="invalid name"):
        create_key(path, "has space")
    revoke_key(path, "a")
    assert [r.name for r in read_key_file(path)] == ["b"]
    with pytest.raises(KeyFileError, match="no key named 'a'"):
        revoke_key(path, "a")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "keys.json"),
        ('{"keys": [{"name": "a", "sha256": "xyz", "created": "2025-01-01T00:00:00Z"}]}', "sha256"),
        ('{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '"}]}', "created"),
        ('{"keys": [], "extra": 1}', "extra"),
    ],
)
def test_a_broken_key_file_is_refused_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyFileError, match=message):
        read_key_file(path)


def test_missing_or_empty_key_file_counts_as_no_keys_and_a_key_is_generated(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    assert read_key_file(path) == []
    for content in (None, ""):
        if content is not None:
            path.write_text(content)
        store, generated, watcher = _key_store_for(path)
        assert generated is not None and watcher is not None
        assert store.match(generated) == KeyIdentity("generated")


def _key_store_for(path: Path) -> tuple[KeyStore, str | None, KeyFileWatcher | None]:
    from tests.conftest import settings_with

    return _key_store(settings_with(auth=AuthSettings(key_file=str(path))))


def test_watcher_installs_changes_and_keeps_the_keys_in_force_on_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    first = create_key(path, "first")
    base = [StoredKey(digest("sk-config"), KeyIdentity("config"))]
    watcher = KeyFileWatcher(path, 0.01, base, signature(path))
    installed: list[KeyStore] = []

    asyncio.run(watcher.check(installed.append))
    assert installed == []  # unchanged
    second = create_key(path, "second", models=["m"])
    revoke_key(path, "first")
    asyncio.run(watcher.check(installed.append))
    store = installed[-1]
    assert store.match(first) is None
    assert store.match(second) == KeyIdentity("second", models=frozenset({"m"}))
    assert store.match("sk-config") == KeyIdentity("config")
    path.write_text("{broken")
    asyncio.run(watcher.check(installed.append))
    assert len(installed) == 1
    assert "key file not reloaded" in caplog.text


def _kubelet_write(mount: Path, files: dict[str, str], version: int) -> None:
    """What the kubelet does to a mounted Secret (its AtomicWriter): the files go into a new
    timestamped directory, `..data` is switched to it by renaming a new symlink over it, each
    visible name is a symlink through `..data`, and the old directory is removed."""
    stamp = f"..2025_01_01_00_00_{version:02d}.{version:09d}"
    (mount / stamp).mkdir()
    for name, text in files.items():
        (mount / stamp / name).write_text(text)
    previous = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    (mount / "..data_tmp").symlink_to(stamp)
    os.rename(mount / "..data_tmp", mount / "..data")
    for name in files:
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(Path("..data") / name)
    if previous is not None:
        shutil.rmtree(mount / previous)


def test_watcher_follows_a_kubernetes_secret_update(tmp_path: Path) -> None:
    """A key file mounted from a Secret is replaced by a symlink swap of the whole directory."""
    scratch = tmp_path / "scratch.json"
    kept, revoked = create_key(scratch, "kept"), create_key(scratch, "revoked")
    both = scratch.read_text()
    revoke_key(scratch, "revoked")
    mount = tmp_path / "keys"
    mount.mkdir()
    _kubelet_write(mount, {"keys.json": both}, version=1)
    path = mount / "keys.json"
    store, _, watcher = _key_store_for(path)
    assert watcher is not None and store.match(revoked) is not None
    installed: list[KeyStore] = []
    asyncio.run(watcher.check(installed.append))
    assert installed == []

    _kubelet_write(mount, {"keys.json": scratch.read_text()}, version=2)
    asyncio.run(watcher.check(installed.append))
    assert len(installed) == 1
    assert installed[-1].match(revoked) is None
    assert installed[-1].match(kept) == KeyIdentity("kept")
    # Same content again (a resync writes an identical file): the keys stay as they are.
    _kubelet_write(mount, {"keys.json": scratch.read_text()}, version=3)
    asyncio.run(watcher.check(installed.append))
    assert installed[-1].match(kept) == KeyIdentity("kept")
