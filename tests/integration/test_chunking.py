"""on_overflow = "chunk": the served vector against a hand computation with transformers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgspec
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from app.config import ApiSettings
from app.models.registry import resolve_path
from tests.conftest import TEST_KEY, settings_with
from tests.serving import Gateway, run_gateway

CHUNKED = "minilm-chunked"
MAX_LENGTH = 16
TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 5)  # 45 word tokens


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    base = settings_with()
    entry = msgspec.structs.replace(base.models[0], name=CHUNKED, max_length=MAX_LENGTH, on_overflow="chunk")
    settings = msgspec.structs.replace(base, models=[entry], api=ApiSettings(max_request_tokens=100))
    with run_gateway(settings, key=TEST_KEY) as running:
        yield running


def _post(gateway: Gateway, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/embeddings", headers=gateway.headers(), json=body, timeout=60)


def _hand_computed(texts: list[str]) -> tuple[np.ndarray, list[int]]:
    """Windows of 14 text tokens ([CLS] and [SEP] make 16), each mean-pooled by the model itself,
    averaged with their token counts as weights, then normalised."""
    path = resolve_path("bundled:all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    vectors, counts = [], []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt")
        assert encoded["input_ids"].shape[1] <= MAX_LENGTH
        with torch.inference_mode():
            states = model(**encoded).last_hidden_state[0]
        vectors.append(states.mean(dim=0).numpy().astype(np.float64))
        counts.append(encoded["input_ids"].shape[1])
    mean = sum(c * v for c, v in zip(counts, vectors, strict=True)) / sum(counts)
    return mean / np.linalg.norm(mean), counts


def test_a_long_input_is_the_weighted_mean_of_its_windows(gateway: Gateway) -> None:
    words = TEXT.split(" ")
    windows = [" ".join(words[i : i + 14]) for i in range(0, len(words), 14)]
    assert [len(w.split(" ")) for w in windows] == [14, 14, 14, 3]
    want, counts = _hand_computed(windows)
    short = "a short sentence"
    response = _post(gateway, {"model": CHUNKED, "input": [TEXT, short], "encoding_format": "float"})
    assert response.status_code == 200, response.text
    data = response.json()
    got = np.array(data["data"][0]["embedding"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
    # Every window's tokens are counted, and the short input beside it is untouched.
    alone = _post(gateway, {"model": CHUNKED, "input": short, "encoding_format": "float"}).json()
    assert data["usage"]["prompt_tokens"] == sum(counts) + alone["usage"]["prompt_tokens"]
    np.testing.assert_allclose(data["data"][1]["embedding"], alone["data"][0]["embedding"], atol=1e-6)


def test_the_request_token_limit_counts_every_window(gateway: Gateway) -> None:
    response = _post(gateway, {"model": CHUNKED, "input": [TEXT, TEXT], "encoding_format": "float"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Requested 106 tokens, max 100 tokens per request")
