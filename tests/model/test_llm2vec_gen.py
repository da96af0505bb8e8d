"""LLM2Vec-Gen served as the package computes it: vectors equal llm2vec-gen 0.1.3's own
single-text encode() (golden fixtures from tests/reference/llm2vec_gen), whatever a text is
batched with, with the README's instructions, truncation that keeps the special tokens, and
user text that holds special-token strings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from app.config import Alias, ModelSettings
from tests.conftest import TEST_KEY, settings_with
from tests.model.llm2vec_gen_fixtures import CHECKPOINTS, GenFixtures, materialize
from tests.serving import Gateway, run_gateway

GOLDEN = 0.99999


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="session")
def gen(tmp_path_factory: pytest.TempPathFactory) -> GenFixtures:
    return materialize(tmp_path_factory.mktemp("gen"))


def gen_entry(fixtures: GenFixtures, checkpoint: str, name: str, **changes: object) -> ModelSettings:
    fields: dict[str, object] = {
        "name": name,
        "kind": "llm2vec-gen",
        "base_model": str(fixtures.checkpoint(checkpoint)),
        "dtype": "float32",
        # Raw vectors, to compare with the package's encode() before normalisation.
        "normalize": False,
        "owned_by": "tests",
    }
    return ModelSettings(**(fields | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def gen_gateway(gen: GenFixtures) -> Iterator[Gateway]:
    vectors = gen.vectors
    models = []
    for checkpoint in CHECKPOINTS:
        aliases = [
            Alias(name=f"{checkpoint}-query", instruction=vectors["query_instruction"]),
            Alias(name=f"{checkpoint}-document", instruction=vectors["document_instruction"]),
        ]
        models.append(gen_entry(gen, checkpoint, checkpoint, aliases=aliases))
        short = vectors["short_max_length"]
        models.append(gen_entry(gen, checkpoint, f"{checkpoint}-short", max_length=short))
    # As a deployment serves it: unit vectors.
    models.append(gen_entry(gen, "lora", "lora-unit", normalize=True))
    with run_gateway(settings_with(models=models), key=TEST_KEY) as gateway:
        yield gateway


def embed(gateway: Gateway, model: str, inputs: Any, **extra: Any) -> tuple[np.ndarray, dict[str, int]]:
    body = {"model": model, "input": inputs, "encoding_format": "float", **extra}
    response = httpx.post(f"{gateway.v1}/embeddings", headers=gateway.headers(), json=body, timeout=120)
    assert response.status_code == 200, response.text
    payload = response.json()
    return np.array([d["embedding"] for d in payload["data"]]), payload["usage"]


def assert_golden(got: Any, want: Any) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == len(w)
        assert cosine(g, w) >= GOLDEN, f"row {i}: cosine {cosine(g, w):.6f}"
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_each_text_alone_equals_the_package(gen_gateway: Gateway, gen: GenFixtures, checkpoint: str) -> None:
    golden = gen.golden(checkpoint)
    got = [embed(gen_gateway, checkpoint, text)[0][0] for text in gen.vectors["texts"]]
    assert_golden(got, golden["single"])


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_all_texts_in_one_request_equal_each_alone(
    gen_gateway: Gateway, gen: GenFixtures, checkpoint: str
) -> None:
    golden = gen.golden(checkpoint)
    got, usage = embed(gen_gateway, checkpoint, gen.vectors["texts"])
    assert_golden(got, golden["single"])
    # usage: every token run, the special tokens included, as the package tokenizes them.
    assert usage["prompt_tokens"] == sum(golden["tokens"])
    # The package's own batched encode() pads on the right and pools pads: the pitfall the
    # gateway avoids (only the longest text comes out right there).
    wrong = [cosine(b, s) for b, s in zip(golden["batched_by_package"], golden["single"], strict=True)]
    assert min(wrong) < 0.9


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_concurrent_requests_batched_together_equal_each_alone(
    gen_gateway: Gateway, gen: GenFixtures, checkpoint: str
) -> None:
    """Requests the engine batches together (left padding across requests, with and without
    an instruction) still get each text's own vector."""
    texts = gen.vectors["texts"]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=gen_gateway.headers(), timeout=120) as client:
            posts = [
                client.post(f"{gen_gateway.v1}/embeddings", json={"model": model, "input": text})
                for text in texts
                for model in (checkpoint, f"{checkpoint}-query")
            ]
            return await asyncio.gather(*posts)

    responses = asyncio.run(run())
    golden = gen.golden(checkpoint)
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        want = golden["query" if i % 2 else "single"][i // 2]
        assert cosine(response.json()["data"][0]["embedding"], want) >= GOLDEN


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("how", ["alias", "request"])
def test_readme_instructions_are_prepended_text(
    gen_gateway: Gateway, gen: GenFixtures, checkpoint: str, how: str
) -> None:
    golden, texts = gen.golden(checkpoint), gen.vectors["texts"]
    for kind in ("query", "document"):
        if how == "alias":
            got, _ = embed(gen_gateway, f"{checkpoint}-{kind}", texts)
        else:
            got, _ = embed(gen_gateway, checkpoint, texts, instruction=gen.vectors[f"{kind}_instruction"])
        assert_golden(got, golden[kind])
        assert max(cosine(g, s) for g, s in zip(got, golden["single"], strict=True)) < 0.9999


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_truncation_keeps_the_special_tokens(gen_gateway: Gateway, gen: GenFixtures, checkpoint: str) -> None:
    golden, limit = gen.golden(checkpoint), gen.vectors["short_max_length"]
    got, usage = embed(gen_gateway, f"{checkpoint}-short", gen.vectors["short_texts"])
    assert_golden(got, golden["short"])
    n_texts = len(gen.vectors["short_texts"])
    assert usage["prompt_tokens"] <= n_texts * limit


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_special_token_strings_in_user_text_are_plain_text(
    gen_gateway: Gateway, gen: GenFixtures, checkpoint: str
) -> None:
    golden, texts = gen.golden(checkpoint), gen.vectors["special_texts"]
    got, _ = embed(gen_gateway, checkpoint, texts)
    assert_golden(got, golden["special_in_text"])
    short, _ = embed(gen_gateway, f"{checkpoint}-short", texts)
    assert_golden(short, golden["special_in_text_short"])
    # The package, truncated, counts the user's strings as its special tokens and pools
    # the text's last tokens instead: a shifted span.
    shifted = golden["special_in_text_short_by_package"]
    assert max(cosine(g, s) for g, s in zip(short, shifted, strict=True)) < 0.99


def test_served_through_the_openai_sdk(gen_gateway: Gateway, gen: GenFixtures) -> None:
    """A deployment's settings (unit vectors) through the real SDK, which asks for base64."""
    client = openai.OpenAI(base_url=gen_gateway.v1, api_key=gen_gateway.key, max_retries=0)
    texts = gen.vectors["texts"]
    out = client.embeddings.create(model="lora-unit", input=texts)
    want = np.array(gen.golden("lora")["single"])
    got = np.array([d.embedding for d in out.data])
    assert got.shape == want.shape == (len(texts), 48)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert_golden(got, want / np.linalg.norm(want, axis=1, keepdims=True))
    assert out.usage.prompt_tokens == sum(gen.golden("lora")["tokens"])
    cut = client.embeddings.create(model="lora-unit", input=texts[1], dimensions=16)
    vector = np.array(cut.data[0].embedding)
    assert vector.shape == (16,)
    assert cosine(vector, want[1][:16]) >= GOLDEN
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


def test_models_list_and_errors(gen_gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gen_gateway.v1, api_key=gen_gateway.key, max_retries=0)
    assert {"tokens", "tokens-query", "lora", "lora-document"} <= {m.id for m in client.models.list()}
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(model="lora", input="x", dimensions=49)
    assert error.value.status_code == 400
    assert "dimensions" in str(error.value)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_the_tokenizer_part_alone_gives_the_packages_input_ids(gen: GenFixtures, checkpoint: str) -> None:
    """No weights: the ids encode() runs for each text alone, truncated ones included."""
    from app.models.llm2vec_gen.backend import load_tokenizer_part

    golden, vectors = gen.golden(checkpoint), gen.vectors
    for texts, limit, key in [
        (vectors["texts"], 512, "input_ids"),
        (vectors["short_texts"], vectors["short_max_length"], "short_input_ids"),
    ]:
        _, tokenizer = load_tokenizer_part(
            gen_entry(gen, checkpoint, "t", max_length=limit), str(gen.checkpoint(checkpoint))
        )
        got = tokenizer.tokenize(texts, "")
        assert [list(t.input_ids) for t in got] == golden[key]
        assert all(t.pooled == int(golden["encoding_mode"].split("_")[1]) for t in got)
