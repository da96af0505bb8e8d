"""The gateway reproduces LLM2Vec: vectors equal llm2vec's own encode(), attention is
bidirectional, and the instruction is left out of the mean."""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from llm2vec import LLM2Vec

from app.models.protocol import ModelLoadError
from app.models.registry import load_backend
from tests.model.conftest import FAMILIES, INSTRUCTION, MAX_LENGTH, entry
from tests.model_factory import TinyModel, make_llm2vec_model, make_tokenizer
from tests.serving import Gateway

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, in 2024.",
    "x",
    "Ünïcödé text with emoji 🚀 and    spaces ",
]
SEPARATOR = "!@#$%^&*()"


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@cache
def _reference(base: str, adapter: str) -> LLM2Vec:
    return LLM2Vec.from_pretrained(
        base,
        peft_model_name_or_path=adapter,
        merge_peft=True,
        pooling_mode="mean",
        max_length=MAX_LENGTH,
        torch_dtype=torch.float32,
    )


def reference(model: TinyModel) -> LLM2Vec:
    return _reference(str(model.base), str(model.adapter))


def embed(gateway: Gateway, model: str, inputs: Any, **extra: Any) -> tuple[np.ndarray, dict[str, int]]:
    body = {"model": model, "input": inputs, "encoding_format": "float", **extra}
    response = httpx.post(f"{gateway.v1}/embeddings", headers=gateway.headers(), json=body, timeout=120)
    assert response.status_code == 200, response.text
    payload = response.json()
    return np.array([d["embedding"] for d in payload["data"]]), payload["usage"]


@pytest.mark.parametrize("family", FAMILIES)
def test_vectors_equal_llm2vec_encode_without_instruction(
    llm2vec_gateway: Gateway, tiny_models: dict[str, TinyModel], family: str
) -> None:
    got, _ = embed(llm2vec_gateway, family, TEXTS)
    want = reference(tiny_models[family]).encode(TEXTS, show_progress_bar=False).numpy()
    assert got.shape == want.shape == (len(TEXTS), 64)
    for g, w in zip(got, want, strict=True):
        assert cosine(g, w) >= 0.99999
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["alias", "extra_body"])
def test_vectors_equal_llm2vec_encode_with_instruction(
    llm2vec_gateway: Gateway, tiny_models: dict[str, TinyModel], family: str, how: str
) -> None:
    if how == "alias":
        got, _ = embed(llm2vec_gateway, f"{family}-query", TEXTS)
    else:
        got, _ = embed(llm2vec_gateway, family, TEXTS, instruction=INSTRUCTION)
    want = reference(tiny_models[family]).encode([[INSTRUCTION, t] for t in TEXTS], show_progress_bar=False)
    plain = reference(tiny_models[family]).encode(TEXTS, show_progress_bar=False)
    for g, w, p in zip(got, want.numpy(), plain.numpy(), strict=True):
        assert cosine(g, w) >= 0.99999
        assert cosine(g, p) < 0.9999  # the instruction does change the vector


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_bidirectional(llm2vec_gateway: Gateway, family: str) -> None:
    # bos_token pooling returns the first position's state; it can only depend on the
    # last token if attention runs both ways.
    first, _ = embed(llm2vec_gateway, f"{family}-bos", ["the cat sat on the mat", "the cat sat on the dog"])
    assert cosine(first[0], first[1]) < 0.9999
    same, _ = embed(llm2vec_gateway, f"{family}-bos", ["the cat sat on the mat", "the cat sat on the mat"])
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)


def _manual_mean(model: TinyModel, prompt: str, text: str, all_tokens: bool = False) -> np.ndarray:
    """Mean of the last hidden states over the text's own tokens (or over every token)."""
    l2v = reference(model)
    ids = l2v.tokenizer(prompt, return_tensors="pt")
    n_text = len(l2v.tokenizer(text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        states = l2v.model(**ids).last_hidden_state[0]
    span = states if all_tokens else states[-n_text:]
    return span.mean(dim=0).numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_is_excluded_from_pooling(
    llm2vec_gateway: Gateway, tiny_models: dict[str, TinyModel], family: str
) -> None:
    text = "what is the capital of France"
    prompt = f"{INSTRUCTION} {text}"
    got, usage = embed(llm2vec_gateway, f"{family}-query", text)
    model = tiny_models[family]
    assert cosine(got[0], _manual_mean(model, prompt, text)) >= 0.99999
    assert cosine(got[0], _manual_mean(model, prompt, text, all_tokens=True)) < 0.999
    # usage counts every token the model ran: instruction, text and special tokens.
    assert usage["prompt_tokens"] == len(reference(model).tokenizer(prompt)["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_llm2vec_separator_in_user_text_does_not_shift_the_span(
    llm2vec_gateway: Gateway, tiny_models: dict[str, TinyModel], family: str
) -> None:
    text = f"price {SEPARATOR} is up"
    got, _ = embed(llm2vec_gateway, f"{family}-query", text)
    model = tiny_models[family]
    correct = _manual_mean(model, f"{INSTRUCTION} {text}", text)
    assert cosine(got[0], correct) >= 0.99999
    # llm2vec's own encode() splits at the user's separator and pools the wrong span.
    naive = reference(model).encode([[INSTRUCTION, text]], show_progress_bar=False)[0].numpy()
    assert cosine(naive, correct) < 0.9999


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_by_one(llm2vec_gateway: Gateway, family: str) -> None:
    batched, batch_usage = embed(llm2vec_gateway, family, TEXTS)
    single = [embed(llm2vec_gateway, family, t) for t in TEXTS]
    for row, (vector, _) in zip(batched, single, strict=True):
        assert cosine(row, vector[0]) >= 0.99999
    assert batch_usage["prompt_tokens"] == sum(u["prompt_tokens"] for _, u in single)


@pytest.mark.parametrize("family", FAMILIES)
def test_concurrent_requests_of_mixed_lengths_equal_llm2vec(
    llm2vec_gateway: Gateway, tiny_models: dict[str, TinyModel], family: str
) -> None:
    """Requests batched together by the engine (left padding across requests, with and
    without the instruction) still equal llm2vec's encode() of each text alone."""

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
    expected = reference(tiny_models[family])
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        text = TEXTS[i // 2]
        pair = [INSTRUCTION, text] if i % 2 else text
        want = expected.encode([pair], show_progress_bar=False)[0].numpy()
        assert cosine(response.json()["data"][0]["embedding"], want) >= 0.99999


def test_long_input_is_truncated_to_max_length(llm2vec_gateway: Gateway) -> None:
    _, usage = embed(llm2vec_gateway, "llama", " ".join(["word"] * 500))
    assert usage["prompt_tokens"] == MAX_LENGTH


def test_native_token_ids_are_the_models_own(
    llm2vec_gateway: Gateway, tiny_models: dict[str, TinyModel]
) -> None:
    tokenizer = reference(tiny_models["llama"]).tokenizer
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    from_ids, _ = embed(llm2vec_gateway, "llama", [ids])
    from_text, _ = embed(llm2vec_gateway, "llama", "hello world")
    assert cosine(from_ids[0], from_text[0]) >= 0.99999


def test_qwen2_is_refused_at_load(tmp_path_factory: pytest.TempPathFactory) -> None:
    qwen = make_llm2vec_model(tmp_path_factory.mktemp("qwen2"), "qwen2")
    with pytest.raises(ModelLoadError, match="causal"):
        load_backend(entry(qwen, "qwen"))


def test_bos_pooling_without_a_bos_token_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = make_llm2vec_model(tmp_path_factory.mktemp("nobos"), "llama", with_adapter=False)
    make_tokenizer(model.base, with_bos=False)
    with pytest.raises(ModelLoadError, match="BOS"):
        load_backend(entry(model, "nobos", pooling="bos_token"))


@pytest.mark.parametrize("pooling", ["weighted_mean", "eos_token", "last_token"])
def test_other_pooling_modes_equal_llm2vec(tiny_models: dict[str, TinyModel], pooling: str) -> None:
    model = tiny_models["mistral"]
    backend = load_backend(entry(model, "m", pooling=pooling))
    ours = backend.embed(backend.tokenize(TEXTS, INSTRUCTION))
    l2v = LLM2Vec.from_pretrained(
        str(model.base),
        peft_model_name_or_path=str(model.adapter),
        merge_peft=True,
        pooling_mode=pooling,
        max_length=MAX_LENGTH,
        torch_dtype=torch.float32,
    )
    want = l2v.encode([[INSTRUCTION, t] for t in TEXTS], show_progress_bar=False).numpy()
    for g, w in zip(ours, want, strict=True):
        assert cosine(g, w) >= 0.99999
