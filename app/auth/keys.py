"""API keys: named, held as SHA-256 digests, matched in constant time, each with its policy."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from app.config import AuthSettings

KEY_PREFIX = "sk-"


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """Who a request is; the only thing about a key that travels past authentication.

    `rpm` and `tpm` override the configured defaults (None: the default; 0: unlimited);
    `models` is the set of served names the key may use (None: all of them).
    """

    name: str
    rpm: int | None = None
    tpm: int | None = None
    models: frozenset[str] | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the server holds it: its digest, never the key."""

    sha256: str
    identity: KeyIdentity


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A high-entropy key in OpenAI's `sk-` shape."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def identity(name: str, rpm: int | None, tpm: int | None, models: Iterable[str]) -> KeyIdentity:
    allowed = frozenset(models)
    return KeyIdentity(name, rpm, tpm, allowed or None)


def keys_from_settings(settings: AuthSettings) -> list[StoredKey]:
    return [
        StoredKey(
            key.sha256 if key.sha256 is not None else digest(key.key or ""),
            identity(key.name, key.rpm, key.tpm, key.models),
        )
        for key in settings.keys
    ]


class KeyStore:
    """An immutable set of keys; a reload builds a new store and swaps it in whole."""

    def __init__(self, keys: Iterable[StoredKey]) -> None:
        self._keys = [(bytes.fromhex(key.sha256), key.identity) for key in keys]

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> KeyStore:
        return cls(keys_from_settings(settings))

    def match(self, presented: str) -> KeyIdentity | None:
        """The key's identity, comparing against every key so timing reveals nothing."""
        candidate = hashlib.sha256(presented.encode("utf-8")).digest()
        found: KeyIdentity | None = None
        for stored, who in self._keys:
            if hmac.compare_digest(candidate, stored) and found is None:
                found = who
        return found
