"""The computation the CUDA graphs capture (app/models/cuda_graphs.py) equals the eager
forward: a batch padded up to a bucket shape (extra padding rows, extra left padding, an
additive key mask, pooling as a weighted sum) gives the same vectors for every family and
pooling mode. Capturing and replaying needs a GPU: `python -m bench.gpu_check` compares
the replayed graphs with the eager path there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.models.cuda_graphs import ROW_BUCKETS, WIDTH_BUCKETS, bucket, padded_inputs, pooled_forward
from app.models.llm2vec_backend import LLM2VecBackend
from tests.model.conftest import FAMILIES, INSTRUCTION, entry
from tests.model_factory import TinyCheckpoint

TEXTS = ["hello world", "x", "The quick brown fox jumps over the lazy dog, again and again."]


def _graph_path(backend: LLM2VecBackend, instruction: str) -> tuple[np.ndarray, np.ndarray]:
    batch = backend.tokenize(TEXTS, instruction)
    eager = backend.embed(batch)
    width = max(len(t.input_ids) for t in batch)
    rows, padded_width = bucket(len(batch), ROW_BUCKETS), bucket(width + 5, WIDTH_BUCKETS)
    assert rows is not None and padded_width is not None and rows > len(batch)
    model = backend.model
    ids, keep, positions = padded_inputs(batch, rows, padded_width, model._pad_id)
    weights = torch.zeros((rows, padded_width))
    weights[: len(batch)] = model.pool_weights(batch, padded_width)
    with torch.inference_mode():
        graphed = pooled_forward(model._model, ids, keep, positions, weights)[: len(batch)].numpy()
    return eager, graphed


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", ["mean", "weighted_mean", "eos_token", "bos_token"])
def test_padded_bucket_forward_equals_eager(
    checkpoints: dict[str, TinyCheckpoint], family: str, pooling: str
) -> None:
    settings = entry(checkpoints[family], family, pooling=pooling, device="cpu", dtype="float32")
    backend = LLM2VecBackend(settings, settings.base_model)
    for instruction in ("", INSTRUCTION):
        eager, graphed = _graph_path(backend, instruction)
        np.testing.assert_allclose(graphed, eager, rtol=1e-4, atol=1e-5)


def test_padding_rows_attend_to_one_token_and_positions_count_real_tokens() -> None:
    from app.models.protocol import TokenizedText

    ids, keep, positions = padded_inputs([TokenizedText((5, 6, 7), 2, 3)], 2, 5, 0)
    assert ids.tolist() == [[0, 0, 5, 6, 7], [0, 0, 0, 0, 0]]
    assert keep.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]
    assert positions.tolist() == [[0, 0, 0, 1, 2], [0, 0, 0, 0, 0]]
    assert bucket(3, ROW_BUCKETS) == 4 and bucket(33, ROW_BUCKETS) is None


def test_graphs_take_only_launch_bound_batches(checkpoints: dict[str, TinyCheckpoint]) -> None:
    from app.models.cuda_graphs import GraphedForward
    from app.models.protocol import TokenizedText

    settings = entry(checkpoints["llama"], "llama", device="cpu", dtype="float32")
    backend = LLM2VecBackend(settings, settings.base_model)
    graphs = GraphedForward(backend.model._model, "cpu", 0, 32, 256)

    def rows(count: int, width: int) -> list[TokenizedText]:
        return [TokenizedText(tuple(range(1, width + 1)), width, width)] * count

    assert graphs.fits(rows(1, 12))  # a query: padded to 1 x 16
    assert graphs.fits(rows(32, 17))  # 32 queries, padded to 32 x 24
    assert graphs.fits(rows(5, 100))  # padded to 8 x 112: 896 tokens
    assert not graphs.fits(rows(32, 40))  # 1,280 tokens: bound by the GPU, eager
    assert not graphs.fits(rows(32, 80))
    assert not graphs.fits(rows(33, 4))  # more rows than any graph
    assert not graphs.fits(rows(1, 300))  # wider than any graph
