"""Hostile request headers: several Authorization headers are refused with a 400 envelope
rather than one of them being picked (which one a proxy or the server would use differs)."""

from __future__ import annotations

import httpx
import pytest

from app.auth.middleware import DUPLICATE_AUTHORIZATION
from tests.conftest import MINILM, TEST_KEY
from tests.serving import Gateway

GOOD = ("Authorization", f"Bearer {TEST_KEY}")
WRONG = ("Authorization", "Bearer sk-wrong")


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/embeddings", [GOOD, GOOD]),
        ("POST", "/v1/embeddings", [GOOD, WRONG]),
        ("POST", "/v1/embeddings", [WRONG, GOOD]),
        ("GET", "/v1/models", [GOOD, ("authorization", "Basic abc")]),
    ],
    ids=["same-key-twice", "good-then-wrong", "wrong-then-good", "models-bearer-and-basic"],
)
def test_duplicate_authorization_headers_get_400(
    minilm_gateway: Gateway, method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    response = httpx.request(
        method, minilm_gateway.url + path, headers=headers, json={"model": MINILM, "input": "hi"}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {
            "message": DUPLICATE_AUTHORIZATION,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    single = httpx.request(
        method, minilm_gateway.url + path, headers=[GOOD], json={"model": MINILM, "input": "hi"}, timeout=30
    )
    assert single.status_code == 200, single.text
