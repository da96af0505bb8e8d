"""The HTTP side of a graceful drain (the process side is app.lifecycle).

Once a drain has begun, `/ready` answers 503 (the route reads `Drain.draining`), and a
request that the shutdown has to cancel before its response started (still queued, or a
client that never finished sending its body) is answered 503 with `Retry-After` and
`Connection: close` instead of a dropped connection or uvicorn's bare 500.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.api.schemas import ErrorBody, ErrorResponse

SHUTTING_DOWN = "The server is shutting down and could not finish your request; please retry."
_SHED_BODY = msgspec.json.encode(
    ErrorResponse(error=ErrorBody(message=SHUTTING_DOWN, type="server_error", param=None, code=None))
)


@dataclass
class Drain:
    """Shared by the signal handler, the /ready route and the middleware (one event loop)."""

    draining: bool = False
    started: float = 0.0  # time.monotonic() of the signal
    # Requests answered while draining, and those cut short with a 503.
    answered: int = 0
    shed: int = 0

    def begin(self) -> None:
        if not self.draining:
            self.draining = True
            self.started = time.monotonic()


class DrainMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await next_app(scope, receive, tracked)
        except asyncio.CancelledError:
            # Only the shutdown cancels a request task (a client that leaves is handled in
            # the route); once the response has started there is nothing left to say.
            if not self._drain.draining or started:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._drain.shed += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_SHED_BODY)).encode()),
                        (b"retry-after", b"1"),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _SHED_BODY, "more_body": False})
        if self._drain.draining:
            self._drain.answered += 1
