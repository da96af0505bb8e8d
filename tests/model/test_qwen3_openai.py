"""A tiny Qwen3 LLM2Vec model (transformers' own Qwen3 classes, MNTP + supervised LoRA),
configured as kind = "llm2vec", served over /v1/embeddings to the real openai SDK: its
vectors equal an independent bidirectional mean-pooling computation, not the causal one."""

from __future__ import annotations

import numpy as np
import pytest
from openai import OpenAI

from tests.model import independent
from tests.model.conftest import INSTRUCTION
from tests.model.independent import cosine
from tests.model_factory import TinyCheckpoint
from tests.serving import Gateway

TEXTS = ["what is the capital of France?", "Paris is the capital of France.", "ok"]


@pytest.mark.parametrize("model", ["qwen3", "qwen3-query"])
def test_qwen3_over_the_openai_sdk_equals_an_independent_bidirectional_mean(
    llm2vec_gateway: Gateway, checkpoints: dict[str, TinyCheckpoint], model: str
) -> None:
    client = OpenAI(base_url=llm2vec_gateway.v1, api_key=llm2vec_gateway.key, max_retries=0)
    response = client.embeddings.create(model=model, input=TEXTS)
    instruction = INSTRUCTION if model.endswith("-query") else ""
    checkpoint = checkpoints["qwen3"]
    for text, item in zip(TEXTS, response.data, strict=True):
        got = np.array(item.embedding)
        assert cosine(got, independent.mean_embedding(checkpoint, text, instruction)) >= 0.99999
        assert cosine(got, independent.mean_embedding(checkpoint, text, instruction, causal=True)) < 0.999
