"""The gateway equals llm2vec 0.2.3's own encode(), on golden vectors stored in the repo.

tests/reference/ (its own venv, `make golden`) built tiny Llama, Mistral and Gemma LLM2Vec
checkpoints laid out as McGill-NLP publishes them (an `-mntp` directory whose MNTP adapter
sits on a base model, plus a supervised adapter), named so that each of llm2vec's prompt
wrappers fires, and stored llm2vec's encode() of every text alone for every pooling mode,
with and without an instruction. Here the same checkpoints load through the gateway's own
seams (a ModelSettings entry, the EmbeddingEngine, a real server) and must give the same
vectors: each text alone, all texts of a case batched together in one request (left
padding), and over HTTP with the openai SDK. No llm2vec import: the reference is the files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from openai import OpenAI

from app.config import Alias, ModelSettings
from app.engine.engine import EmbeddingEngine
from tests.conftest import TEST_KEY, settings_with
from tests.reference.layout import CASES, FIXTURES, materialize
from tests.serving import run_gateway

pytestmark = pytest.mark.slow

GOLDEN: list[dict[str, Any]] = json.loads(CASES.read_text())["cases"]
BY_ID = {case["id"]: case for case in GOLDEN}
MIN_COSINE = 0.99999
# Cases also checked over HTTP: a wrapper with an instruction, a weighted mean without one,
# and Gemma's first-token state (its wrapper adds a second BOS).
SERVED_CASES = (
    "llama-3-instruct-mean-instruction",
    "mistral-instruct-weighted_mean-plain",
    "gemma-it-bos_token-instruction",
)


def _group_key(case: dict[str, Any]) -> tuple[str, str, int]:
    return case["checkpoint"], case["pooling"], case["max_length"]


def entries(checkpoints: dict[str, Path], cases: list[dict[str, Any]], **changes: Any) -> list[ModelSettings]:
    """One model entry per (checkpoint, pooling, max_length); each case is a served name
    (the entry's own, or an alias) whose instruction is the case's."""
    result = []
    for (key, pooling, max_length), group in groupby(sorted(cases, key=_group_key), key=_group_key):
        first, *others = list(group)
        fields: dict[str, Any] = {
            "name": first["id"],
            "kind": "llm2vec",
            "base_model": str(checkpoints[key] / "mntp"),
            "adapters": [str(checkpoints[key] / "supervised")],
            "pooling": pooling,
            "max_length": max_length,
            "instruction": first["instruction"],
            "aliases": [Alias(name=case["id"], instruction=case["instruction"]) for case in others],
            "dtype": "float32",
            "device": "cpu",
            # Raw vectors, so that their length is compared too.
            "normalize": False,
            "owned_by": "tests",
        }
        result.append(ModelSettings(**(fields | changes)))
    return result


def expected(case: dict[str, Any]) -> npt.NDArray[np.float32]:
    vectors: npt.NDArray[np.float32] = np.load(FIXTURES / case["vectors"], allow_pickle=False)
    assert vectors.shape[0] == len(case["texts"])
    return vectors


def assert_equal_vectors(got: Any, want: npt.NDArray[np.float32], *, normalized: bool = False) -> None:
    got = np.asarray(got, dtype=np.float64)
    want64 = want.astype(np.float64)
    assert got.shape == want64.shape
    for i, (g, w) in enumerate(zip(got, want64, strict=True)):
        cosine = float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w)))
        assert cosine >= MIN_COSINE, f"text {i}: cosine {cosine:.7f}"
        if not normalized:
            assert np.linalg.norm(g) == pytest.approx(np.linalg.norm(w), rel=1e-4), f"text {i}: length"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("golden")
    return {key: materialize(key, root / key) for key in sorted({case["checkpoint"] for case in GOLDEN})}


@pytest.fixture(scope="module")
def engine(checkpoints: dict[str, Path]) -> Iterator[EmbeddingEngine]:
    engine = EmbeddingEngine(settings_with(models=entries(checkpoints, GOLDEN)))
    engine.start()
    try:
        engine.wait_loaded(timeout=600)
        assert engine.ready, engine.status()
        yield engine
    finally:
        engine.stop()


def test_golden_cases_cover_the_reference() -> None:
    """Every pooling mode, with and without an instruction, each wrapper, mixed lengths."""
    assert {c["pooling"] for c in GOLDEN} == {"mean", "weighted_mean", "eos_token", "last_token", "bos_token"}
    assert {bool(c["instruction"]) for c in GOLDEN} == {True, False}
    assert {c["family"] for c in GOLDEN} == {"llama", "mistral", "gemma"}
    # Names on which llm2vec 0.2.3's prepare_for_tokenization wraps or suffixes the text.
    assert {c["name_or_path"] for c in GOLDEN} >= {
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-2-7b-chat-hf",
        "mistralai/Mistral-7B-Instruct-v0.2",
        "google/gemma-2-9b-it",
        "Qwen/Qwen2-7B-Instruct",
    }
    for case in GOLDEN:
        assert len(set(case["texts"])) == len(case["texts"]), case["id"]
        assert not any("!@#$%^&*()" in t for t in case["texts"]), case["id"]
        # Rows of different lengths, and at least one cut at max_length.
        assert len(set(case["prompt_tokens"])) > 1
        assert max(case["prompt_tokens"]) == case["max_length"]


@pytest.mark.parametrize("case", GOLDEN, ids=[c["id"] for c in GOLDEN])
def test_each_text_alone_equals_llm2vec(engine: EmbeddingEngine, case: dict[str, Any]) -> None:
    async def one_by_one() -> list[Any]:
        return [await engine.embed(case["id"], text) for text in case["texts"]]

    results = asyncio.run(one_by_one())
    assert_equal_vectors(np.concatenate([r.vectors for r in results]), expected(case))
    assert [r.prompt_tokens for r in results] == case["prompt_tokens"]


@pytest.mark.parametrize("case", GOLDEN, ids=[c["id"] for c in GOLDEN])
def test_texts_batched_in_one_request_equal_llm2vec(engine: EmbeddingEngine, case: dict[str, Any]) -> None:
    # All texts distinct and of different lengths: one left-padded batch, every row computed.
    result = asyncio.run(engine.embed(case["id"], case["texts"]))
    assert_equal_vectors(result.vectors, expected(case))
    assert result.prompt_tokens == sum(case["prompt_tokens"])


def test_served_over_http_equal_llm2vec(checkpoints: dict[str, Path]) -> None:
    """Through a real server and the openai SDK, normalised as served; the instruction both
    from the configured name and per request (`extra_body`)."""
    cases = [BY_ID[i] for i in SERVED_CASES]
    plain = BY_ID["llama-3-instruct-mean-plain"]
    models = entries(checkpoints, [*cases, plain], normalize=True)
    with run_gateway(settings_with(models=models), key=TEST_KEY) as gateway:
        client = OpenAI(base_url=gateway.v1, api_key=TEST_KEY, max_retries=0)
        for case in cases:
            out = client.embeddings.create(model=case["id"], input=case["texts"], encoding_format="float")
            assert_equal_vectors([d.embedding for d in out.data], expected(case), normalized=True)
            assert out.usage.prompt_tokens == sum(case["prompt_tokens"])
        with_instruction = BY_ID["llama-3-instruct-mean-instruction"]
        out = client.embeddings.create(
            model=plain["id"],
            input=with_instruction["texts"],
            extra_body={"instruction": with_instruction["instruction"]},
        )
        assert_equal_vectors([d.embedding for d in out.data], expected(with_instruction), normalized=True)
