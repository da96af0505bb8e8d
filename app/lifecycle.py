"""Serving with a graceful drain: uvicorn's Server, with this module's signal handling.

From the first SIGTERM or SIGINT at time T:

    T                       /ready answers 503; requests are served as before, new ones too
    T + drain_seconds       stop accepting connections; idle ones are closed; what is in
                            flight finishes
    T + timeout - reserve   requests still in flight are cancelled; a client whose response
                            had not started gets 503 with Retry-After (app.api.drain)
    then                    the app's shutdown (engine, limiter, metrics); exit status 0
    T + timeout             watchdog: if anything still holds the process, exit now (status 1)

A second signal exits at once, with status 128 + the signal's number (as a shell reports a
process killed by it). uvicorn's own handling re-raises the signal after a graceful shutdown,
so the process ends "killed by SIGTERM" (-15), which process managers read as a crash, and it
waits without bound for a client that sent part of a body and stalled: neither happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn

from app.api.drain import Drain
from app.config import ServerSettings

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL = 0.05


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, drain_seconds: float, timeout: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_seconds = drain_seconds
        self._timeout = timeout
        # Kept back from the timeout to answer cancelled requests and stop the app.
        self._reserve = min(1.0, (timeout - drain_seconds) / 2)

    def _in_flight(self) -> int:
        return len(self.server_state.tasks)

    def _since_signal(self) -> float:
        return time.monotonic() - self._drain.started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
        # Unlike uvicorn, the signal is not raised again: a drained process exits 0.

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self._drain.draining:
            logger.warning("%s again: exiting now, %d requests in flight", name, self._in_flight())
            _exit(128 + sig)
        self._drain.begin()
        logger.info(
            "%s: draining; /ready answers 503, requests are served for %.1f s more and the process "
            "exits within %.1f s (a second signal exits at once); %d requests in flight",
            name,
            self._drain_seconds,
            self._timeout,
            self._in_flight(),
        )
        watchdog = threading.Timer(self._timeout, self._overdue)
        watchdog.daemon = True
        watchdog.start()

    def _overdue(self) -> None:
        logger.error("shutdown did not finish within %.1f s of the signal: exiting now", self._timeout)
        _exit(1)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        return self._drain.draining and self._since_signal() >= self._drain_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self._drain.draining:  # stopped by other means (tests set should_exit)
            await super().shutdown(sockets)
            return
        logger.info(
            "drain period over: no longer accepting connections; %d requests in flight", self._in_flight()
        )
        for server in self.servers:
            server.close()
        state = self.server_state
        # Idle keep-alive connections close now; busy ones after their response.
        for connection in list(state.connections):
            connection.shutdown()
        deadline = self._drain.started + self._timeout - self._reserve
        while (state.connections or state.tasks) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)
        pending = list(state.tasks)
        if pending:
            logger.warning(
                "shutdown timeout: cutting short %d requests still in flight (503, Retry-After)", len(pending)
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=self._reserve / 2)
        for connection in list(state.connections):
            connection.shutdown()
        await self.lifespan.shutdown()
        logger.info(
            "drained in %.1f s: %d requests answered while draining, %d of them cut short with 503",
            self._since_signal(),
            self._drain.answered,
            self._drain.shed,
        )


def _exit(status: int) -> None:
    """Leave now, whatever threads are doing, after the log lines are out."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(status)


def serve(config: uvicorn.Config, drain: Drain, settings: ServerSettings) -> bool:
    """Run until drained; False if the server could not start."""
    server = DrainingServer(config, drain, settings.drain_seconds, settings.shutdown_timeout_seconds)
    server.run()
    return server.started
