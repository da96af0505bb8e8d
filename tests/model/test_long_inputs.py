"""An LLM2Vec model given a huge text: the same tokens, vector and usage as a text short
enough to be tokenized whole (app.models.tokenization cuts the huge one first), for the
full prompt and the pooled span alike, with and without an instruction."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import TEST_KEY
from tests.model.conftest import FAMILIES, MAX_LENGTH
from tests.serving import Gateway

HUGE = "Bidirectional attention turns a decoder into a text encoder, word by word. " * 40_000  # 3 MB
HEAD = HUGE[:1_500]  # over MAX_LENGTH tokens, short enough to be tokenized whole


def embed(gateway: Gateway, model: str, text: str) -> tuple[list[float], int]:
    response = httpx.post(
        f"{gateway.v1}/embeddings",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json={"model": model, "input": text},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body["data"][0]["embedding"], body["usage"]["prompt_tokens"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("suffix", ["", "-query", "-bos"])
def test_a_huge_text_embeds_as_its_kept_tokens(llm2vec_gateway: Gateway, family: str, suffix: str) -> None:
    huge, huge_tokens = embed(llm2vec_gateway, family + suffix, HUGE)
    head, head_tokens = embed(llm2vec_gateway, family + suffix, HEAD)
    assert huge_tokens == head_tokens == MAX_LENGTH
    np.testing.assert_allclose(huge, head, rtol=1e-5, atol=1e-6)
