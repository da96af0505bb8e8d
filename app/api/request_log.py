"""Request ids, the one log line per request, and the request metrics.

The line has the request id, key name, model, number of inputs, tokens, status, latency,
queue wait and compute time; never a key or any input text. What a client chose (model,
path) is cut to a bounded length and, in text logs, escaped so it cannot forge a line. Its
fields also travel as `fields` on the log record, which the JSON formatter (app.logs) writes.
Headers a handler puts in `RequestRecord.headers` (the rate-limit headers) go out with the
response, whatever it is, errors included.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

from app.logs import bounded, text_token

if TYPE_CHECKING:
    from app.api.metrics import GatewayMetrics

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
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


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


def _with_headers(message: HTTPResponseStartEvent, extra: dict[str, str]) -> None:
    headers = list(message.get("headers", []))
    present = {name.lower() for name, _ in headers}
    headers += [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
    message["headers"] = headers


class RequestLogMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self._metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        record = RequestRecord(request_id=_incoming_id(scope) or uuid.uuid4().hex)
        _state(scope)["request_record"] = record
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _with_headers(message, {REQUEST_ID_HEADER: record.request_id, **record.headers})
            await send(message)

        try:
            await next_app(scope, receive, send_with_id)
        except Exception as exc:
            # Handled outside this middleware (e.g. an authentication error): log its status.
            status = getattr(exc, "status_code", 500)
            raise
        finally:
            self._finish(scope, record, status, time.perf_counter() - started)

    def _finish(self, scope: Scope, record: RequestRecord, status: int, seconds: float) -> None:
        key = str(getattr(scope.get("user"), "name", "-"))
        path = scope.get("path", "-")
        fields = {
            "request_id": record.request_id,
            "method": bounded(str(scope.get("method", "-"))),
            "path": bounded(path),
            "key": bounded(key),
            "model": bounded(record.model),
            "inputs": record.inputs,
            "tokens": record.tokens,
            "status": status,
            "ms": round(seconds * 1000, 1),
            "queue_ms": round(record.queue_seconds * 1000, 1),
            "compute_ms": round(record.compute_seconds * 1000, 1),
        }
        # Text: every string escaped and quoted where needed (a client's model or path can hold
        # newlines); JSON: the formatter escapes them.
        text = [text_token(value) if isinstance(value, str) else value for value in fields.values()]
        logger.info(" ".join(f"{name}=%s" for name in fields), *text, extra={"fields": fields})
        if self._metrics is not None and path.startswith("/v1/"):
            self._metrics.on_request(
                model=record.model,
                key=key,
                status=status,
                seconds=seconds,
                tokens=record.tokens,
                queue_seconds=record.queue_seconds,
                compute_seconds=record.compute_seconds,
            )
