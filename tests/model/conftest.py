"""Tiny random-weight LLM2Vec checkpoints of every served family, built offline once per
session and laid out as McGill-NLP publishes them (MNTP adapter inside the -mntp directory)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.config import Alias, ApiSettings, ModelSettings
from tests.conftest import TEST_KEY, settings_with
from tests.model_factory import TinyCheckpoint, make_mntp_checkpoint
from tests.serving import Gateway, run_gateway

FAMILIES = ("llama", "mistral", "gemma", "qwen2", "qwen3")
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query:"
MAX_LENGTH = 64


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyCheckpoint]:
    return {f: make_mntp_checkpoint(tmp_path_factory.mktemp(f), f) for f in FAMILIES}


def entry(checkpoint: TinyCheckpoint, name: str, **changes: object) -> ModelSettings:
    fields: dict[str, object] = {
        "name": name,
        "kind": "llm2vec",
        "base_model": str(checkpoint.mntp),
        "adapters": [str(checkpoint.adapter)],
        "max_length": MAX_LENGTH,
        # Raw vectors, to compare with an independent computation before normalisation.
        "normalize": False,
        "owned_by": "tests",
    }
    return ModelSettings(**(fields | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def llm2vec_gateway(checkpoints: dict[str, TinyCheckpoint]) -> Iterator[Gateway]:
    models = []
    for family, checkpoint in checkpoints.items():
        models.append(
            entry(checkpoint, family, aliases=[Alias(name=f"{family}-query", instruction=INSTRUCTION)])
        )
        # The first position's state: it sees later tokens only with bidirectional attention.
        models.append(entry(checkpoint, f"{family}-bos", pooling="bos_token"))
    settings = settings_with(models=models, api=ApiSettings(token_ids="native"))
    with run_gateway(settings, key=TEST_KEY) as gateway:
        yield gateway
