"""The batch planner: budget, size, fairness between requests (small ones first, the oldest
after a bound), and length grouping."""

from __future__ import annotations

import random

import pytest

from app.engine.planning import first_input, select_batch


def _drain(lengths: list[int], size: int, budget: int, max_padding: float | None = None) -> list[list[int]]:
    """Plan batches until the queue is empty, as the model thread does; ids are original indices."""
    queue = list(range(len(lengths)))
    batches = []
    while queue:
        picked = select_batch([lengths[i] for i in queue], size, budget, max_padding=max_padding)
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


# -- padding allowance (app.engine.forward_cost) ----------------------------------------------


def test_a_short_input_does_not_ride_in_a_long_ones_forward_past_the_allowance() -> None:
    # A 14 MiB string cut to 256 tokens and a one-word query, queued together on a CPU where
    # 40 padded tokens cost a forward's fixed cost: two forwards, not one of 2 x 256.
    assert _drain([256, 6], size=32, budget=16384, max_padding=40) == [[0], [1]]
    assert _drain([6, 256], size=32, budget=16384, max_padding=40) == [[0], [1]]
    assert _drain([256, 6], size=32, budget=16384) == [[0, 1]]  # no allowance known: as before


def test_lengths_within_the_allowance_still_share_batches() -> None:
    lengths = [12, 30, 20, 25, 18, 200, 230, 210]
    batches = _drain(lengths, size=32, budget=16384, max_padding=40)
    assert batches == [[0, 4, 2, 3, 1], [5, 7, 6]]


def test_the_allowance_bounds_each_rows_padding_not_the_sum() -> None:
    # 32 queries of 14 to 20 tokens: one forward, however many rows a longer one pads.
    lengths = [14 + i % 7 for i in range(32)]
    assert _drain(lengths, size=32, budget=16384, max_padding=8) == [
        sorted(range(32), key=lambda i: lengths[i])
    ]
    # The longest row minus the shortest stays within it, growing the batch either way.
    assert _drain([10, 14, 19, 22], size=32, budget=16384, max_padding=10) == [[0, 1, 2], [3]]


@pytest.mark.parametrize("seed", range(3))
def test_an_allowance_never_drops_or_repeats_inputs(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(300)]
    batches = _drain(lengths, size=16, budget=2000, max_padding=25)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for batch in batches:
        assert max(lengths[i] for i in batch) - min(lengths[i] for i in batch) <= 25


# -- request-level fairness ------------------------------------------------------------------


def _drain_requests(
    requests: list[list[int]],
    size: int,
    budget: int,
    arrivals: list[float] | None = None,
    batch_seconds: float = 0.1,
    max_idle: float = 2.0,
) -> list[list[tuple[int, int]]]:
    """Plan batches as the batcher does, on a clock that advances `batch_seconds` a batch.
    Request r (a list of input lengths) is queued at `arrivals[r]` (default: all at 0);
    each input is (request, index within it)."""
    arrivals = arrivals or [0.0] * len(requests)
    pending = sorted(range(len(requests)), key=arrivals.__getitem__)
    queue: list[tuple[int, int]] = []
    last_taken: dict[int, float] = {}
    batches = []
    step = 0
    while pending or queue:
        now = step * batch_seconds
        while pending and arrivals[pending[0]] <= now:
            r = pending.pop(0)
            queue += [(r, i) for i in range(len(requests[r]))]
            last_taken[r] = arrivals[r]
        if queue:
            lengths = [requests[r][i] for r, i in queue]
            owners = [r for r, _ in queue]
            idle = {r: now - last_taken[r] for r in set(owners)}
            first = first_input(lengths, owners, idle, max_idle, size, budget)
            picked = select_batch(lengths, size, budget, first)
            batches.append([queue[i] for i in picked])
            for r, _ in batches[-1]:
                last_taken[r] = now
            queue = [q for i, q in enumerate(queue) if i not in set(picked)]
        step += 1
    return batches


def test_a_one_text_request_goes_into_the_next_batch_after_a_big_one() -> None:
    big, small = [256] * 300, [8]
    batches = _drain_requests([big, small], size=32, budget=1024)
    assert (1, 0) in batches[0]
    # The big request's rows still fill the rest of that batch.
    assert sum(1 for r, _ in batches[0] if r == 0) == 3


def test_requests_that_fit_in_a_batch_go_in_arrival_order_before_bigger_ones() -> None:
    requests = [[100] * 50, [30] * 2, [100] * 20, [10], [30] * 2]
    owners = [r for r, x in enumerate(requests) for _ in x]
    first = first_input([x for r in requests for x in r], owners, dict.fromkeys(owners, 0.0), 2, 8, 256)
    assert first == 50  # request 1: the oldest of those that fit in one batch
    # Among requests too big for one batch, the least queued work goes first.
    order = [batch[0][0] for batch in _drain_requests([[100] * 50, [100] * 20], size=2, budget=200)]
    assert order[:10] == [1] * 10


def test_a_big_request_served_all_along_does_not_take_priority_when_it_grows_old() -> None:
    # 300 long texts queued at 0; a one-text request at 5 s, long after the big one's first
    # input was queued: it still goes into the next batch, as the big one was never idle.
    batches = _drain_requests([[256] * 300, [8]], size=32, budget=1024, arrivals=[0.0, 5.0])
    assert (1, 0) in batches[50]


def test_a_starved_request_goes_first_after_the_bound() -> None:
    # A big request (3 x 200 tokens, over the 256 budget) behind a stream of small requests
    # that fill every batch by themselves (2 x 100 tokens): after 1 s without any of its
    # inputs in a forward, it seeds the next batch.
    requests = [[200] * 3] + [[100] * 2 for _ in range(40)]
    batches = _drain_requests(requests, size=2, budget=256, max_idle=1.0)
    first_big = next(n for n, batch in enumerate(batches) if batch[0][0] == 0)
    assert first_big == 10  # at 1.0 s, 0.1 s a batch
    idle = {0: 0.9, 1: 0.0}
    assert first_input([200] * 3 + [100], [0, 0, 0, 1], idle, 1.0, 2, 256) == 3
    assert first_input([200] * 3 + [100], [0, 0, 0, 1], {**idle, 0: 1.0}, 1.0, 2, 256) == 0


@pytest.mark.parametrize("spread", [1, 3])
def test_equal_requests_are_planned_as_before(spread: int) -> None:
    # 96 one-text clients: full batches, planned exactly as oldest-first planning does
    # (with equal lengths, in arrival order).
    requests = [[10 + i % spread] for i in range(96)]
    fair = _drain_requests(requests, size=32, budget=16384)
    oldest_first = _drain([r[0] for r in requests], size=32, budget=16384)
    assert [[r for r, _ in b] for b in fair] == oldest_first
    assert [len(b) for b in fair] == [32, 32, 32]
    if spread == 1:
        assert [sorted(b) for b in oldest_first] == [list(range(k, k + 32)) for k in (0, 32, 64)]


def test_a_seed_beyond_the_look_ahead_window_is_still_taken() -> None:
    lengths = [256] * 1000 + [8]
    picked = select_batch(lengths, 4, 1024, first=1000)
    assert picked[0] == 1000 and len(picked) == 4
