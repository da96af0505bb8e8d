"""The three clients that must work unchanged: the openai SDK, LangChain, and curl."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

from tests.conftest import MINILM
from tests.serving import Gateway

TEXTS = ["The cat sits on the mat.", "Stock markets fell sharply today.", "A kitten rests on a rug."]


def _client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=gateway.key, max_retries=0)


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_openai_sync_default_base64_equals_float(minilm_gateway: Gateway) -> None:
    client = _client(minilm_gateway)
    default = client.embeddings.create(model=MINILM, input=TEXTS)  # the SDK asks for base64
    floats = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    assert default.model == MINILM and default.object == "list"
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == 384
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=1e-6)
        assert np.linalg.norm(a.embedding) == pytest.approx(1.0, abs=1e-5)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 0
    assert default.usage.total_tokens == default.usage.prompt_tokens


def test_openai_async(minilm_gateway: Gateway) -> None:
    async def run() -> list[openai.types.CreateEmbeddingResponse]:
        client = openai.AsyncOpenAI(base_url=minilm_gateway.v1, api_key=minilm_gateway.key, max_retries=0)
        async with client:
            return await asyncio.gather(
                client.embeddings.create(model=MINILM, input=TEXTS[0]),
                client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float"),
            )

    single, batch = asyncio.run(run())
    np.testing.assert_allclose(single.data[0].embedding, batch.data[0].embedding, atol=1e-5)


def test_openai_dimensions_and_instruction_extra(minilm_gateway: Gateway) -> None:
    client = _client(minilm_gateway)
    full = client.embeddings.create(model=MINILM, input=TEXTS[0], encoding_format="float")
    short = client.embeddings.create(model=MINILM, input=TEXTS[0], dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64
    np.testing.assert_allclose(short.data[0].embedding, _unit(full.data[0].embedding[:64]), atol=1e-6)
    prefixed = client.embeddings.create(
        model=MINILM, input=TEXTS[0], encoding_format="float", extra_body={"instruction": "query: "}
    )
    assert not np.allclose(prefixed.data[0].embedding, full.data[0].embedding, atol=1e-3)
    assert prefixed.usage.prompt_tokens > full.usage.prompt_tokens


@pytest.mark.parametrize("ctx_check", [True, False], ids=["token-ids(default)", "strings"])
def test_langchain_paths_agree_with_sdk(minilm_gateway: Gateway, ctx_check: bool) -> None:
    sdk = _client(minilm_gateway).embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    sent: list[dict[str, object]] = []
    # Only observes what LangChain sends; every LangChain setting stays at its default.
    observer = httpx.Client(event_hooks={"request": [lambda r: sent.append(json.loads(r.read()))]})
    embeddings = OpenAIEmbeddings(
        model=MINILM,
        base_url=minilm_gateway.v1,
        api_key=minilm_gateway.key,
        check_embedding_ctx_length=ctx_check,
        http_client=observer,
    )
    docs = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(TEXTS[0])
    first_input = sent[0]["input"]
    assert isinstance(first_input, list)
    # The default path sends cl100k_base token ids, the other sends the strings.
    assert all(isinstance(x, list if ctx_check else str) for x in first_input)
    assert sent[0].get("encoding_format") == "base64"
    for got, want in zip(docs, sdk.data, strict=True):
        np.testing.assert_allclose(got, want.embedding, atol=1e-5)
    np.testing.assert_allclose(query, sdk.data[0].embedding, atol=1e-5)


def test_langchain_async_default(minilm_gateway: Gateway) -> None:
    embeddings = OpenAIEmbeddings(model=MINILM, base_url=minilm_gateway.v1, api_key=minilm_gateway.key)
    docs = asyncio.run(embeddings.aembed_documents(TEXTS))
    assert len(docs) == 3 and all(len(d) == 384 for d in docs)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_bearer_token(minilm_gateway: Gateway) -> None:
    body = json.dumps({"model": MINILM, "input": "hello from curl"})
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            f"{minilm_gateway.v1}/embeddings",
            "-H",
            f"Authorization: Bearer {minilm_gateway.key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    payload, status = out.rsplit("\n", 1)
    assert status == "200"
    data = json.loads(payload)
    assert data["object"] == "list" and data["data"][0]["object"] == "embedding"
    assert len(data["data"][0]["embedding"]) == 384
