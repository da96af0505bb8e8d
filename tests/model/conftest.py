"""Tiny random-weight Llama, Mistral and Gemma LLM2Vec models, built offline once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.config import Alias, ApiSettings, EngineSettings, ModelSettings
from tests.conftest import TEST_KEY, settings_with
from tests.model_factory import TinyModel, make_llm2vec_model
from tests.serving import Gateway, run_gateway

FAMILIES = ("llama", "mistral", "gemma")
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query:"
MAX_LENGTH = 64


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    return {f: make_llm2vec_model(tmp_path_factory.mktemp(f), f) for f in FAMILIES}


def entry(model: TinyModel, name: str, **changes: object) -> ModelSettings:
    fields: dict[str, object] = {
        "name": name,
        "kind": "llm2vec",
        "base_model": str(model.base),
        "adapters": [str(model.adapter)] if model.adapter else [],
        "max_length": MAX_LENGTH,
        # Raw vectors, to compare with llm2vec's encode() before normalisation.
        "normalize": False,
        "owned_by": "tests",
    }
    return ModelSettings(**(fields | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def llm2vec_gateway(tiny_models: dict[str, TinyModel]) -> Iterator[Gateway]:
    models = []
    for family, model in tiny_models.items():
        models.append(entry(model, family, aliases=[Alias(name=f"{family}-query", instruction=INSTRUCTION)]))
        # The first position's state: it sees later tokens only with bidirectional attention.
        models.append(entry(model, f"{family}-bos", pooling="bos_token"))
    # Six entries: model threads, not six worker processes of torch each (this suite is about
    # the vectors; tests/integration/test_workers.py covers the processes).
    settings = settings_with(
        models=models, api=ApiSettings(token_ids="native"), engine=EngineSettings(workers="thread")
    )
    with run_gateway(settings, key=TEST_KEY) as gateway:
        yield gateway
