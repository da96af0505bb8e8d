"""The bundled all-MiniLM-L6-v2 through the gateway equals sentence-transformers."""

from __future__ import annotations

import httpx
import numpy as np
from sentence_transformers import SentenceTransformer

from app.models.registry import resolve_path
from tests.conftest import MINILM
from tests.serving import Gateway

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "Ünïcödé, emoji 🚀, and a somewhat longer sentence to vary the padding in the batch.",
]


def _embed(gateway: Gateway, inputs: list[str]) -> np.ndarray:
    response = httpx.post(
        f"{gateway.v1}/embeddings",
        headers=gateway.headers(),
        json={"model": MINILM, "input": inputs, "encoding_format": "float"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def test_equals_sentence_transformers(minilm_gateway: Gateway) -> None:
    reference = SentenceTransformer(resolve_path("bundled:all-MiniLM-L6-v2"), device="cpu")
    want = reference.encode(TEXTS, normalize_embeddings=True)
    got = _embed(minilm_gateway, TEXTS)
    for g, w in zip(got, want, strict=True):
        assert float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w))) >= 0.9999


def test_ranks_a_paraphrase_above_an_unrelated_sentence(minilm_gateway: Gateway) -> None:
    query, paraphrase, unrelated = _embed(
        minilm_gateway,
        [
            "How do I reset my password?",
            "What are the steps to change my password?",
            "The weather is sunny today.",
        ],
    )
    assert query @ paraphrase > query @ unrelated + 0.2
