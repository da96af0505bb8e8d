"""Which key a request is, and the served names that key may use."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from app.auth.keys import KeyIdentity
from app.errors import ModelNotFoundError

# Requests when authentication is disabled: one identity, under the default limits.
ANONYMOUS = KeyIdentity("anonymous")


def caller(connection: ASGIConnection[Any, Any, Any, Any]) -> KeyIdentity:
    user = connection.scope.get("user")
    return user if isinstance(user, KeyIdentity) else ANONYMOUS


def require_model(key: KeyIdentity, model: str) -> None:
    """OpenAI's 404 `model_not_found` for a name the key may not use, as for an unknown one."""
    if not key.may_use(model):
        raise ModelNotFoundError(model)
