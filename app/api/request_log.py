"""Request ids and the one log line per request.

The line has the request id, key name, model, number of inputs, tokens, status and
latency; never a key or any input text.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("app.requests")

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class RequestRecord:
    """What a handler learns about a request, for its log line."""

    request_id: str
    model: str = "-"
    inputs: int = 0
    tokens: int = 0


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def record_of(scope: Scope) -> RequestRecord | None:
    record: RequestRecord | None = _state(scope).get("request_record")
    return record


def request_id_of(scope: Scope) -> str:
    record = record_of(scope)
    return record.request_id if record else "-"


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            # Echoed and logged, so only a plain token is taken from the client.
            return text if _SAFE_ID.fullmatch(text) else None
    return None


class RequestLogMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        record = RequestRecord(request_id=_incoming_id(scope) or uuid.uuid4().hex)
        _state(scope)["request_record"] = record
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), record.request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await next_app(scope, receive, send_with_id)
        except Exception as exc:
            # Handled outside this middleware (e.g. an authentication error): log its status.
            status = getattr(exc, "status_code", 500)
            raise
        finally:
            user = scope.get("user")
            logger.info(
                "request_id=%s method=%s path=%s key=%s model=%s inputs=%d tokens=%d status=%d ms=%.1f",
                record.request_id,
                scope.get("method", "-"),
                scope.get("path", "-"),
                getattr(user, "name", "-"),
                record.model,
                record.inputs,
                record.tokens,
                status,
                (time.perf_counter() - started) * 1000,
            )
