from __future__ import annotations

import random

import pytest

from app.engine.batcher import plan_batches


@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_every_input_once_within_budget(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = plan_batches(lengths, max_batch_size=16, max_batch_tokens=2000)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        assert len(batch) <= 16
        if len(batch) > 1:
            assert max(lengths[i] for i in batch) * len(batch) <= 2000


def test_an_input_over_the_budget_runs_alone() -> None:
    assert plan_batches([5000, 10, 10], max_batch_size=8, max_batch_tokens=100) == [[0], [1, 2]]


def test_similar_lengths_share_batches() -> None:
    lengths = [10, 200, 11, 199]
    assert plan_batches(lengths, max_batch_size=2, max_batch_tokens=10_000) == [[1, 3], [2, 0]]
