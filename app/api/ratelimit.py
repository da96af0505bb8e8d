"""Per-key requests and tokens per window, with OpenAI's 429 body and `x-ratelimit-*` headers.

Counting is the `limits` library's fixed-window strategy over its memory storage (this process)
or Redis (shared: every replica increments the same counters, atomically). A window starts at
a key's first request and resets whole `window_seconds` later.

Tokens are known only once the engine has tokenized, so (as LiteLLM does) a request is refused
before it runs if the key's requests are used up, counting this one, or its tokens are; after
a successful embed its `usage.prompt_tokens` are charged, even past the limit, which then
refuses the key's requests until the window resets.

If the storage cannot be reached, `on_storage_error` decides: "open" serves without limits,
"closed" answers 503. Either way the outage is logged once, and its end once; during it the
storage is tried again at most once a second.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import redis.asyncio
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.auth.keys import KeyIdentity
from app.config import LimitsSettings
from app.errors import OverloadedError, RateLimitError

logger = logging.getLogger(__name__)

Kind = Literal["requests", "tokens"]
_RETRY_STORAGE_SECONDS = 1.0
_STORAGE_ERRORS = (StorageError, redis.RedisError, OSError)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go's durations): "120ms", "1s", "59.5s", "6m0s", "1h0m0s"."""
    seconds = max(0.0, seconds)
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


@dataclass
class Permit:
    """A request let through: whose it is, its limits, and the headers to send."""

    key: KeyIdentity
    model: str
    rpm: int
    tpm: int
    headers: dict[str, str] = field(default_factory=dict)


class RateLimiter:
    def __init__(self, settings: LimitsSettings) -> None:
        self._settings = settings
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._storage: Storage | None = None
        self._counter: FixedWindowRateLimiter | None = None
        self._down = False
        self._retry_at = 0.0

    # -- lifecycle: the storage belongs to the serving event loop ---------------------------

    async def start(self) -> None:
        storage_url = self._settings.storage
        if storage_url.startswith("memory://"):
            self._storage = MemoryStorage()
        else:
            timeout = self._settings.storage_timeout_seconds
            self._pool = redis.asyncio.ConnectionPool.from_url(
                storage_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One immediate retry survives a connection the server closed; no backoff
                # that would hold requests while Redis is down.
                retry=Retry(NoBackoff(), 1),
            )
            self._storage = RedisStorage(
                "async+" + storage_url,
                wrap_exceptions=True,
                implementation="redispy",
                key_prefix=self._settings.key_prefix,
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
        self._counter = FixedWindowRateLimiter(self._storage)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()

    # -- per request --------------------------------------------------------------------------

    def limits_for(self, key: KeyIdentity) -> tuple[int, int]:
        rpm = self._settings.rpm if key.rpm is None else key.rpm
        tpm = self._settings.tpm if key.tpm is None else key.tpm
        return rpm, tpm

    async def admit(self, key: KeyIdentity, model: str) -> Permit:
        """Count the request, or raise RateLimitError (429) if the key is over a limit."""
        rpm, tpm = self.limits_for(key)
        if not (rpm or tpm):
            return Permit(key, model, 0, 0)
        if not self._storage_usable():
            self._refuse_if_closed()
            return Permit(key, model, 0, 0)
        permit = Permit(key, model, rpm, tpm)
        try:
            refusal = await self._admit(permit)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc)
            return Permit(key, model, 0, 0)
        self._storage_ok()
        if refusal is not None:
            raise refusal
        return permit

    async def charge(self, permit: Permit, tokens: int) -> None:
        """Charge a served request's tokens; its headers then show what is left."""
        if not permit.tpm or tokens <= 0 or not self._storage_usable():
            return
        assert self._counter is not None
        item = self._item(permit.tpm)
        try:
            await self._counter.hit(item, "tokens", permit.key.name, cost=tokens)
            used, reset = await self._usage(item, "tokens", permit.key.name)
        except _STORAGE_ERRORS as exc:
            # The request has been served: a closed policy can refuse only the next ones.
            self._storage_failed(exc, refuse=False)
            return
        self._storage_ok()
        permit.headers.update(_headers("tokens", permit.tpm, used, reset))

    # -- background work (batch jobs): tokens only, no request counted ------------------------

    async def tokens_reset_in(self, key: KeyIdentity) -> float:
        """0 while the key has tokens left in its window, else the seconds until it resets."""
        _, tpm = self.limits_for(key)
        if not tpm or not self._storage_usable():
            return 0.0
        try:
            used, reset = await self._usage(self._item(tpm), "tokens", key.name)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc, refuse=False)
            return 0.0
        return max(0.0, reset - time.time()) if used >= tpm else 0.0

    async def charge_tokens(self, key: KeyIdentity, tokens: int) -> None:
        _, tpm = self.limits_for(key)
        await self.charge(Permit(key, "", 0, tpm), tokens)

    async def _admit(self, permit: Permit) -> RateLimitError | None:
        assert self._counter is not None
        name = permit.key.name
        if permit.tpm:
            item = self._item(permit.tpm)
            used, reset = await self._usage(item, "tokens", name)
            if used >= permit.tpm:
                return self._exceeded(permit, "tokens", permit.tpm, used, reset)
            permit.headers.update(_headers("tokens", permit.tpm, used, reset))
        if permit.rpm:
            item = self._item(permit.rpm)
            allowed = await self._counter.hit(item, "requests", name)
            used, reset = await self._usage(item, "requests", name)
            if not allowed:
                return self._exceeded(permit, "requests", permit.rpm, permit.rpm, reset)
            permit.headers.update(_headers("requests", permit.rpm, used, reset))
        return None

    def _item(self, amount: int) -> RateLimitItem:
        return RateLimitItemPerSecond(amount, self._settings.window_seconds)

    async def _usage(self, item: RateLimitItem, kind: Kind, name: str) -> tuple[int, float]:
        """(amount used in the current window, when it resets as a Unix time)."""
        assert self._storage is not None
        storage_key = item.key_for(kind, name)
        used = await self._storage.get(storage_key)
        reset = await self._storage.get_expiry(storage_key) if used else time.time()
        return used, reset

    def _exceeded(self, permit: Permit, kind: Kind, limit: int, used: int, reset: float) -> RateLimitError:
        wait = max(0.0, reset - time.time())
        window = self._settings.window_seconds
        per = f"min ({kind[0].upper()}PM)" if window == 60 else format_duration(window)
        requested = ", Requested 1" if kind == "requests" else ""
        error = RateLimitError(
            f"Rate limit reached for {permit.model} for key `{permit.key.name}` on {kind} per {per}: "
            f"Limit {limit}, Used {used}{requested}. Please try again in {format_duration(wait)}.",
            headers={**permit.headers, **_headers(kind, limit, used, reset)},
        )
        error.error_type = kind
        error.headers["retry-after"] = str(max(1, math.ceil(wait)))
        return error

    # -- storage outages ----------------------------------------------------------------------

    def _storage_usable(self) -> bool:
        return not self._down or time.monotonic() >= self._retry_at

    def _storage_failed(self, exc: Exception, *, refuse: bool = True) -> None:
        self._retry_at = time.monotonic() + _RETRY_STORAGE_SECONDS
        if not self._down:
            self._down = True
            cause = exc.storage_error if isinstance(exc, StorageError) else exc
            logger.error(
                "rate-limit storage unreachable (%s: %s); failing %s until it is back",
                type(cause).__name__,
                cause,
                self._settings.on_storage_error,
            )
        if refuse:
            self._refuse_if_closed()

    def _storage_ok(self) -> None:
        if self._down:
            self._down = False
            logger.warning("rate-limit storage reachable again; limits are enforced")

    def _refuse_if_closed(self) -> None:
        if self._settings.on_storage_error == "closed":
            raise OverloadedError(
                "Rate limits cannot be checked right now; please try again shortly.",
                headers={"retry-after": str(math.ceil(_RETRY_STORAGE_SECONDS))},
            )


def _headers(kind: Kind, limit: int, used: int, reset: float) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, limit - used)),
        f"x-ratelimit-reset-{kind}": format_duration(reset - time.time() if used else 0.0),
    }
