"""Every exception -> OpenAI's error envelope, in this one place.

Gateway errors carry their own status and code. Litestar's own (unknown route, wrong
method, body too large, parameter validation) are translated here, and anything else
is a 500 whose details go to the log with the request id, never to the client.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from app.api.body import TOO_LARGE
from app.api.request_log import request_id_of
from app.api.schemas import ErrorBody, ErrorResponse
from app.errors import (
    GatewayError,
    InternalServerError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
)

logger = logging.getLogger(__name__)


def envelope(error: GatewayError) -> bytes:
    """OpenAI's error body for `error` (also written by app.framing, outside the app)."""
    body = ErrorResponse(
        error=ErrorBody(message=error.message, type=error.error_type, param=error.param, code=error.code)
    )
    return msgspec.json.encode(body)


def error_response(error: GatewayError) -> Response[bytes]:
    return Response(
        content=envelope(error),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def _from_litestar(request: Request[Any, Any, Any], exc: HTTPException) -> GatewayError:
    route = f"({request.method} {request.url.path})"
    if exc.status_code == 404:
        return NotFoundError(f"Invalid URL {route}")
    if exc.status_code == 405:
        return MethodNotAllowedError(f"Invalid method for URL {route}")
    if exc.status_code == 413:
        return RequestTooLargeError(TOO_LARGE)
    if 400 <= exc.status_code < 500:
        error = InvalidRequestError(exc.detail or "Invalid request.")
        error.status_code = exc.status_code
        return error
    return InternalServerError()


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, GatewayError):
        return error_response(exc)
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return error_response(_from_litestar(request, exc))
    logger.error("request %s failed with an unexpected error", request_id_of(request.scope), exc_info=exc)
    return error_response(InternalServerError())
