"""Bearer-key authentication for the /v1 routes, as Litestar authentication middleware."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from app.auth.keys import KeyStore
from app.errors import AuthenticationError

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
WRONG_KEY = "Incorrect API key provided. Ask the gateway's operator for a valid key."


class ApiKeyAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError(MISSING_KEY)
        store: KeyStore = connection.app.state.key_store
        identity = store.match(key)
        if identity is None:
            raise AuthenticationError(WRONG_KEY, code="invalid_api_key")
        return AuthenticationResult(user=identity, auth=None)
