"""The batch planner: budget, size, fairness to the oldest input, and length grouping."""

from __future__ import annotations

import random

import pytest

from app.engine.planning import select_batch


def _drain(lengths: list[int], size: int, budget: int) -> list[list[int]]:
    """Plan batches until the queue is empty, as the model thread does; ids are original indices."""
    queue = list(range(len(lengths)))
    batches = []
    while queue:
        picked = select_batch([lengths[i] for i in queue], size, budget)
        batches.append([queue[i] for i in picked])
        queue = [q for i, q in enumerate(queue) if i not in set(picked)]
    return batches


@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_every_input_once_within_budget(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(400)]
    batches = _drain(lengths, size=16, budget=2000)
    assert sorted(i for b in batches for i in b) == list(range(400))
    for batch in batches:
        assert len(batch) <= 16
        if len(batch) > 1:
            assert max(lengths[i] for i in batch) * len(batch) <= 2000


@pytest.mark.parametrize("seed", range(3))
def test_the_oldest_input_is_always_in_the_next_batch(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 500) for _ in range(100)]
    assert select_batch(lengths, 8, 1000)[0] == 0


def test_an_input_over_the_budget_runs_alone() -> None:
    assert _drain([5000, 10, 10], size=8, budget=100) == [[0], [1, 2]]


def test_similar_lengths_share_batches() -> None:
    lengths = [10, 200, 11, 199]
    assert _drain(lengths, size=2, budget=10_000) == [[0, 2], [1, 3]]


def test_padding_waste_is_small_for_mixed_lengths() -> None:
    rng = random.Random(0)
    lengths = [rng.choice([8, 9, 10, 120, 125, 128]) for _ in range(256)]
    batches = _drain(lengths, size=32, budget=100_000)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded <= 1.1 * sum(lengths)
