"""Bearer-key authentication for the /v1 routes, as Litestar authentication middleware."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from app.auth.keys import KeyStore
from app.errors import AuthenticationError, InvalidRequestError

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
WRONG_KEY = "Incorrect API key provided. Ask the gateway's operator for a valid key."


DUPLICATE_AUTHORIZATION = (
    "Your request has more than one Authorization header. Send exactly one: Authorization: Bearer YOUR_KEY."
)


def bearer_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key in `Authorization: Bearer <key>`, if there is one. Several Authorization
    headers are refused (400): which one counts would depend on the proxies on the way."""
    values = [value for name, value in connection.scope["headers"] if name == b"authorization"]
    if len(values) > 1:
        raise InvalidRequestError(DUPLICATE_AUTHORIZATION)
    scheme, _, key = (values[0].decode("latin-1") if values else "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        key = bearer_key(connection)
        if key is None:
            raise AuthenticationError(MISSING_KEY)
        # Read per request: a reload of the key file swaps in a new store.
        store: KeyStore = connection.app.state.key_store
        identity = store.match(key)
        if identity is None:
            raise AuthenticationError(WRONG_KEY, code="invalid_api_key")
        return AuthenticationResult(user=identity, auth=None)
