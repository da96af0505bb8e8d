"""The request body, read from the ASGI receive channel with its size bounded.

Litestar's own `Request.body()` turns a client that hangs up mid-body (or before the handler
reads a body already sent) into a 500; here it is a ClientDisconnectedError, logged and
counted as 499 like any other departure (408 where app.framing cut a body that was too slow).
"""

from __future__ import annotations

import math
from typing import Any

from litestar import Request

from app.errors import ClientDisconnectedError, RequestTimeoutError, RequestTooLargeError

TOO_LARGE = "The request body is too large."
# Set in the request's scope state by app.framing when the body did not arrive in time.
BODY_TIMED_OUT = "body_timed_out"


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    limit = request.route_handler.resolve_request_max_body_size() or math.inf
    announced = request.content_length
    if announced is not None and announced > limit:
        raise RequestTooLargeError(TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect
            if request.scope["state"].get(BODY_TIMED_OUT):
                raise RequestTimeoutError("The request body was not sent in time.")
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(TOO_LARGE)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
