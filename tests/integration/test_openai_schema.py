"""Responses match OpenAI's published schemas; usage is the model tokenizer's exact count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import tiktoken
from transformers import AutoTokenizer

from app.models.registry import resolve_path
from tests.conftest import MINILM
from tests.serving import Gateway

# OpenAI's own schemas, vendored with their source commit (tests/schemas/README.md).
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "openai-embeddings.json"
TEXTS = ["The quick brown fox jumped over the lazy dog.", "Ünïcödé and emoji 🚀 count too.", "a"]


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = json.loads(SCHEMAS.read_text())["schemas"]
    return schemas


def _validate(instance: object, name: str) -> None:
    schemas = _schemas()
    root = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}
    jsonschema.validate(instance, root)


def _minilm_token_count(texts: list[str]) -> int:
    tokenizer = AutoTokenizer.from_pretrained(resolve_path("bundled:all-MiniLM-L6-v2"))
    return sum(len(ids) for ids in tokenizer(texts)["input_ids"])


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
@pytest.mark.parametrize("input_kind", ["string", "strings", "token-ids", "token-id-arrays"])
def test_response_validates_and_usage_is_exact(
    minilm_gateway: Gateway, encoding_format: str, input_kind: str
) -> None:
    cl100k = tiktoken.get_encoding("cl100k_base")
    inputs: dict[str, Any] = {
        "string": TEXTS[0],
        "strings": TEXTS,
        "token-ids": cl100k.encode(TEXTS[0]),
        "token-id-arrays": [cl100k.encode(t) for t in TEXTS],
    }
    texts = {"string": TEXTS[:1], "strings": TEXTS, "token-ids": TEXTS[:1], "token-id-arrays": TEXTS}[
        input_kind
    ]
    response = httpx.post(
        f"{minilm_gateway.v1}/embeddings",
        headers=minilm_gateway.headers(),
        json={"model": MINILM, "input": inputs[input_kind], "encoding_format": encoding_format},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    if encoding_format == "float":
        _validate(body, "CreateEmbeddingResponse")
    else:
        # The schema types `embedding` as floats; base64 swaps it for a string, as OpenAI does.
        assert all(isinstance(d["embedding"], str) for d in body["data"])
        _validate(
            {**body, "data": [{**d, "embedding": [0.0]} for d in body["data"]]}, "CreateEmbeddingResponse"
        )
    assert set(body) == {"object", "data", "model", "usage"}
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    expected = _minilm_token_count(texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_models_list_and_get_validate(minilm_gateway: Gateway) -> None:
    listing = httpx.get(f"{minilm_gateway.v1}/models", headers=minilm_gateway.headers()).json()
    _validate(listing, "ListModelsResponse")
    assert [m["id"] for m in listing["data"]] == [MINILM]
    one = httpx.get(f"{minilm_gateway.v1}/models/{MINILM}", headers=minilm_gateway.headers()).json()
    _validate(one, "Model")
    assert one == listing["data"][0]


def test_error_validates(minilm_gateway: Gateway) -> None:
    response = httpx.post(f"{minilm_gateway.v1}/embeddings", headers=minilm_gateway.headers(), json={})
    _validate(response.json(), "ErrorResponse")
