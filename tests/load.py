"""A bounded load of embedding requests from client threads, every outcome recorded."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

import httpx


@dataclass(frozen=True)
class Outcome:
    sent: float  # time.monotonic() when sent
    status: int | None  # None: no response (the error says why)
    retry_after: str | None = None
    error: str | None = None
    replica: str | None = None  # x-served-by, where a balancer adds it


@dataclass
class Load:
    """`clients` threads, each sending `body` to `url` in a loop, one request at a time, until
    stop() or a bound: `max_requests` per client, `max_seconds` in all."""

    url: str
    key: str
    body: dict[str, object]
    clients: int = 4
    max_requests: int = 400
    max_seconds: float = 90.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(deadline,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        """Send no new request; wait for those in flight; return every outcome, oldest first."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        with self._lock:
            return sorted(self.outcomes, key=lambda o: o.sent)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def _client(self, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=60) as client:
            for _ in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                sent = time.monotonic()
                try:
                    response = client.post(self.url, json=self.body, headers=headers)
                    outcome = Outcome(
                        sent,
                        response.status_code,
                        response.headers.get("retry-after"),
                        replica=response.headers.get("x-served-by"),
                    )
                except httpx.TransportError as exc:
                    outcome = Outcome(sent, None, error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.outcomes.append(outcome)
