"""LLM2Vec models served over HTTP equal an independent bidirectional computation: the MNTP
adapter in the -mntp checkpoint and the supervised adapter merged, attention bidirectional,
the instruction left out of the mean, left-padded batches equal to each text alone.
(Equality with llm2vec 0.2.3's own encode() is tests/model/test_golden.py, on fixtures.)"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest

from app.models.protocol import ModelLoadError
from app.models.registry import load_backend
from tests.model import independent
from tests.model.conftest import FAMILIES, INSTRUCTION, MAX_LENGTH, entry
from tests.model.independent import cosine
from tests.model_factory import TinyCheckpoint, make_mntp_checkpoint, make_tokenizer
from tests.serving import Gateway

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, in 2024.",
    "x",
    "Ünïcödé text with emoji 🚀 and    spaces ",
]
SEPARATOR = "!@#$%^&*()"


def embed(gateway: Gateway, model: str, inputs: Any, **extra: Any) -> tuple[np.ndarray, dict[str, int]]:
    body = {"model": model, "input": inputs, "encoding_format": "float", **extra}
    response = httpx.post(f"{gateway.v1}/embeddings", headers=gateway.headers(), json=body, timeout=120)
    assert response.status_code == 200, response.text
    payload = response.json()
    return np.array([d["embedding"] for d in payload["data"]]), payload["usage"]


@pytest.mark.parametrize("family", FAMILIES)
def test_vectors_equal_an_independent_bidirectional_mean(
    llm2vec_gateway: Gateway, checkpoints: dict[str, TinyCheckpoint], family: str
) -> None:
    got, _ = embed(llm2vec_gateway, family, TEXTS)
    assert got.shape == (len(TEXTS), 64)
    for text, vector in zip(TEXTS, got, strict=True):
        want = independent.mean_embedding(checkpoints[family], text)
        assert cosine(vector, want) >= 0.99999
        np.testing.assert_allclose(vector, want, rtol=1e-3, atol=1e-4)
        # The causal computation is a different vector: attention really runs both ways.
        assert cosine(vector, independent.mean_embedding(checkpoints[family], text, causal=True)) < 0.999


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["alias", "extra_body"])
def test_instruction_is_joined_and_left_out_of_the_mean(
    llm2vec_gateway: Gateway, checkpoints: dict[str, TinyCheckpoint], family: str, how: str
) -> None:
    if how == "alias":
        got, usage = embed(llm2vec_gateway, f"{family}-query", TEXTS)
    else:
        got, usage = embed(llm2vec_gateway, family, TEXTS, instruction=INSTRUCTION)
    checkpoint = checkpoints[family]
    tokenizer = independent.tokenizer(checkpoint)
    for text, vector in zip(TEXTS, got, strict=True):
        want = independent.mean_embedding(checkpoint, text, INSTRUCTION)
        assert cosine(vector, want) >= 0.99999
        # The instruction changes the vector, and is not itself pooled.
        assert cosine(vector, independent.mean_embedding(checkpoint, text)) < 0.9999
        assert cosine(vector, independent.mean_embedding(checkpoint, text, INSTRUCTION, whole=True)) < 0.999
    # usage counts every token the model ran: instruction, text and special tokens, after truncation.
    ran = [min(len(tokenizer(f"{INSTRUCTION} {t}")["input_ids"]), MAX_LENGTH) for t in TEXTS]
    assert usage["prompt_tokens"] == sum(ran)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_llm2vec_separator_in_user_text_does_not_shift_the_span(
    llm2vec_gateway: Gateway, checkpoints: dict[str, TinyCheckpoint], family: str
) -> None:
    text = f"price {SEPARATOR} is up"
    got, _ = embed(llm2vec_gateway, f"{family}-query", text)
    correct = independent.mean_embedding(checkpoints[family], text, INSTRUCTION)
    assert cosine(got[0], correct) >= 0.99999
    # llm2vec's own encode() splits at the user's separator and pools only " is up".
    tokenizer = independent.tokenizer(checkpoints[family])
    states = independent.forward(checkpoints[family], f"{INSTRUCTION} {text}").last_hidden_state[0]
    naive = states[-len(tokenizer(" is up", add_special_tokens=False)["input_ids"]) :].mean(dim=0).numpy()
    assert cosine(naive, correct) < 0.9999


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_bidirectional(llm2vec_gateway: Gateway, family: str) -> None:
    # bos_token pooling returns the first position's state; it can only depend on the
    # last token if attention runs both ways.
    first, _ = embed(llm2vec_gateway, f"{family}-bos", ["the cat sat on the mat", "the cat sat on the dog"])
    assert cosine(first[0], first[1]) < 0.9999


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen3"])
def test_concurrent_requests_of_mixed_lengths_equal_each_text_alone(
    llm2vec_gateway: Gateway, checkpoints: dict[str, TinyCheckpoint], family: str
) -> None:
    """Requests batched together by the engine (left padding across requests, with and
    without the instruction) equal the independent computation of each text alone, unpadded."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers=llm2vec_gateway.headers(), timeout=120) as client:
            posts = [
                client.post(
                    f"{llm2vec_gateway.v1}/embeddings",
                    json={"model": model, "input": text, "encoding_format": "float"},
                )
                for text in TEXTS
                for model in (family, f"{family}-query")
            ]
            return await asyncio.gather(*posts)

    responses = asyncio.run(run())
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        text, instruction = TEXTS[i // 2], (INSTRUCTION if i % 2 else "")
        want = independent.mean_embedding(checkpoints[family], text, instruction)
        assert cosine(response.json()["data"][0]["embedding"], want) >= 0.99999


def test_long_input_is_truncated_to_max_length(llm2vec_gateway: Gateway) -> None:
    _, usage = embed(llm2vec_gateway, "llama", " ".join(["word"] * 500))
    assert usage["prompt_tokens"] == MAX_LENGTH


def test_native_token_ids_are_the_models_own(
    llm2vec_gateway: Gateway, checkpoints: dict[str, TinyCheckpoint]
) -> None:
    ids = independent.tokenizer(checkpoints["llama"])("hello world", add_special_tokens=False)["input_ids"]
    from_ids, _ = embed(llm2vec_gateway, "llama", [ids])
    want = independent.mean_embedding(checkpoints["llama"], "hello world")
    assert cosine(from_ids[0], want) >= 0.99999


def test_bos_pooling_without_a_bos_token_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = make_mntp_checkpoint(tmp_path_factory.mktemp("nobos"), "llama")
    make_tokenizer(checkpoint.mntp, with_bos=False)
    with pytest.raises(ModelLoadError, match="BOS"):
        load_backend(entry(checkpoint, "nobos", pooling="bos_token"))


@pytest.mark.parametrize(
    ("name", "family", "before", "after"),
    [
        ("meta-llama/Llama-2-7b-chat-hf", "llama", "[INST] ", " [/INST]"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral", "[INST] ", " [/INST]"),
        (
            "meta-llama/Meta-Llama-3-8B-Instruct",
            "llama",
            "<|start_header_id|>user<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
        ("Qwen/Qwen2-7B-Instruct", "qwen2", "<|im_start|>user\n", "<|im_end|>"),
    ],
)
def test_checkpoint_name_picks_llm2vecs_wrapper(
    tmp_path_factory: pytest.TempPathFactory, name: str, family: str, before: str, after: str
) -> None:
    """The -mntp config.json's _name_or_path picks the wrapper; the wrapper's tail is pooled
    with the text, as llm2vec pools everything after its separator."""
    checkpoint = make_mntp_checkpoint(tmp_path_factory.mktemp("named"), family, name_or_path=name)
    backend = load_backend(entry(checkpoint, "named"))
    tokenizer = independent.tokenizer(checkpoint)
    [item] = backend.tokenize(["what is up"], "Query:")
    assert item.input_ids == tuple(tokenizer(f"{before}Query: what is up{after}")["input_ids"])
    assert item.pooled == len(tokenizer(f"what is up{after}", add_special_tokens=False)["input_ids"])
