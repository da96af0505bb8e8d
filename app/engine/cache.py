"""An embedding cache in front of the model: in this process (LRU) or in Redis (shared).

A row's key is a SHA-256 of the served name, the weights' identity (base model, revision,
adapters, dtype), the instruction, the pooling, the pooled-token count and the exact input token ids;
its value is the model's raw float32 vector, before `dimensions` and normalisation, so a hit
gives byte-for-byte the answer the first request got. The engine still counts a hit's tokens
in `usage`, so rate limits and billing see what OpenAI would. A cache that cannot be reached
is a cache that misses: every Redis call is bounded by `timeout_seconds`, and after a
failure Redis is left alone for a second (logged once when it goes, once when it is back).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.config import CacheSettings, ModelSettings
from app.models.protocol import TokenizedText

logger = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]
_RETRY_SECONDS = 1.0


def model_identity(served_name: str, entry: ModelSettings, instruction: str) -> bytes:
    """Everything but the tokens that decides a row's vector."""
    parts = [
        served_name,
        entry.kind,
        entry.base_model,
        entry.revision,
        *entry.adapters,
        entry.dtype,
        entry.pooling,
        instruction,
    ]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()


def row_key(identity: bytes, row: TokenizedText) -> bytes:
    digest = hashlib.sha256(identity)
    digest.update(struct.pack("<I", row.pooled))
    digest.update(np.asarray(row.input_ids, dtype=np.int64).tobytes())
    return digest.digest()


class VectorStore(Protocol):
    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...
    async def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """Least recently used first out, at most `max_entries` vectors."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._data: OrderedDict[bytes, bytes] = OrderedDict()

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        found: list[bytes | None] = []
        for key in keys:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            found.append(value)
        return found

    async def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            self._data[key] = value
            self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def close(self) -> None:
        pass


class RedisStore:
    """Vectors shared by replicas; entries expire after `ttl_seconds` (0: never), and Redis's
    own `maxmemory` policy bounds the total."""

    def __init__(self, url: str, *, prefix: str, ttl_seconds: int, timeout: float) -> None:
        self._url, self._prefix, self._ttl, self._timeout = url, prefix.encode(), ttl_seconds, timeout
        self._client: redis.asyncio.Redis | None = None

    def _redis(self) -> redis.asyncio.Redis:
        # Made on first use, on the serving event loop the connections belong to.
        if self._client is None:
            self._client = redis.asyncio.Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        values = await self._redis().mget([self._prefix + k for k in keys])
        return [v if isinstance(v, bytes) else None for v in values]

    async def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        async with self._redis().pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(self._prefix + key, value, ex=self._ttl or None)
            await pipe.execute()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class EmbeddingCache:
    def __init__(self, store: VectorStore, on_result: CacheObserver | None = None) -> None:
        self._store = store
        self._observer = on_result
        self._down = False
        self._retry_at = 0.0

    async def lookup(
        self, model: str, identity: bytes, rows: Sequence[TokenizedText], dimensions: int
    ) -> tuple[list[bytes], dict[int, Vector]]:
        """(every row's key, the vectors found by row index); nothing found if unreachable."""
        keys = [row_key(identity, row) for row in rows]
        found: dict[int, Vector] = {}
        if self._usable():
            try:
                values = await self._store.get_many(keys)
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
                values = [None] * len(keys)
            else:
                self._ok()
            for i, value in enumerate(values):
                if value is not None and len(value) == 4 * dimensions:
                    found[i] = np.frombuffer(value, dtype=np.float32)
        if self._observer is not None:
            self._observer.on_cache(model, len(found), len(keys) - len(found))
        return keys, found

    async def through(
        self,
        model: str,
        identity: bytes,
        rows: list[TokenizedText],
        dimensions: int,
        compute: Callable[[list[TokenizedText]], Awaitable[Vector]],
    ) -> Vector:
        """Every row's vector: found ones from the cache, the rest computed and then stored."""
        keys, found = await self.lookup(model, identity, rows, dimensions)
        misses = [i for i in range(len(rows)) if i not in found]
        if not found:
            vectors = await compute(rows)
            await self.store(keys, vectors)
            return vectors
        vectors = np.empty((len(rows), dimensions), dtype=np.float32)
        for i, vector in found.items():
            vectors[i] = vector
        if misses:
            computed = await compute([rows[i] for i in misses])
            vectors[misses] = computed
            await self.store([keys[i] for i in misses], computed)
        return vectors

    async def store(self, keys: Sequence[bytes], vectors: Vector) -> None:
        if not keys or not self._usable():
            return
        items = [
            (key, np.ascontiguousarray(vector, dtype=np.float32).tobytes())
            for key, vector in zip(keys, vectors, strict=True)
        ]
        try:
            await self._store.put_many(items)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
        else:
            self._ok()

    async def close(self) -> None:
        await self._store.close()

    def _usable(self) -> bool:
        return not self._down or time.monotonic() >= self._retry_at

    def _failed(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + _RETRY_SECONDS
        if not self._down:
            self._down = True
            logger.error("embedding cache unreachable (%s: %s); serving without it", type(exc).__name__, exc)

    def _ok(self) -> None:
        if self._down:
            self._down = False
            logger.warning("embedding cache reachable again")


class CacheObserver(Protocol):
    def on_cache(self, model: str, hits: int, misses: int) -> None: ...


def make_cache(settings: CacheSettings, observer: CacheObserver | None) -> EmbeddingCache | None:
    if not settings.enabled:
        return None
    store: VectorStore
    if settings.storage == "memory":
        store = MemoryStore(settings.max_entries)
    else:
        store = RedisStore(
            settings.storage,
            prefix=settings.key_prefix,
            ttl_seconds=settings.ttl_seconds,
            timeout=settings.timeout_seconds,
        )
    return EmbeddingCache(store, observer)
