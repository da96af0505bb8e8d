"""API keys: named, held as SHA-256 digests, matched in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from app.config import AuthSettings

KEY_PREFIX = "sk-"


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """Who a request is; the only thing about a key that travels past authentication."""

    name: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A high-entropy key in OpenAI's `sk-` shape."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, keys: list[tuple[str, str]]) -> None:
        """keys: (name, sha256 hex digest) pairs."""
        self._keys = [(name, bytes.fromhex(hexdigest)) for name, hexdigest in keys]

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> KeyStore:
        pairs = []
        for key in settings.keys:
            hexdigest = key.sha256 if key.sha256 is not None else digest(key.key or "")
            pairs.append((key.name, hexdigest))
        return cls(pairs)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, name: str, key: str) -> None:
        self._keys.append((name, bytes.fromhex(digest(key))))

    def match(self, presented: str) -> KeyIdentity | None:
        """The key's identity, comparing against every key so timing reveals nothing."""
        candidate = hashlib.sha256(presented.encode("utf-8")).digest()
        found: KeyIdentity | None = None
        for name, stored in self._keys:
            if hmac.compare_digest(candidate, stored) and found is None:
                found = KeyIdentity(name)
        return found
