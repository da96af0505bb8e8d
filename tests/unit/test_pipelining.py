"""Whether queued requests go to a busy worker at once or wait for the clients of the batch it
runs (app.engine.pipelining): the decision on its own, the return time it is made from, and
the batcher holding a batch for returning clients, with real timing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.engine.batcher import Backlog, Batch, Batcher, Job, always
from app.engine.forward_cost import ForwardCost
from app.engine.observer import NullObserver
from app.engine.pipelining import MAX_RETURN_SECONDS, ReturnTime, merging_pays
from app.models.protocol import TokenizedText

DIMS = 4
ROW = [TokenizedText((1, 2, 3), 3, 3)]


# -- the decision ----------------------------------------------------------------------------


def test_fuller_forwards_win_where_the_fixed_cost_is_small_and_clients_come_back_fast() -> None:
    # As an H200 with CUDA graphs: 7.8 ms fixed, 16 clients back within 3 ms of their answer.
    assert merging_pays(0.0078, 0.003 / 16, queued=16, coming=16, max_wait=0.005)


def test_the_next_batch_goes_at_once_where_the_fixed_cost_outweighs_the_return_time() -> None:
    # Clients take longer to come back than a forward's fixed cost: waiting costs more.
    assert not merging_pays(0.002, 0.004 / 16, queued=16, coming=16, max_wait=0.005)
    # Worth it for the one forward that would take both groups (a > n r), but from then on
    # the worker idles while all 32 come back, 12.8 ms, more than a second forward's 10 ms.
    assert not merging_pays(0.010, 0.0004, queued=16, coming=16, max_wait=0.010)
    # Each request slow to come back: (n + m) r > a.
    assert not merging_pays(0.0078, 0.001, queued=16, coming=4, max_wait=0.005)


def test_no_wait_longer_than_a_batch_may_wait_for_company() -> None:
    # As the stand-in on two cores: 19 ms fixed, clients back in 8.7 ms: merging would pay,
    # but not within the 5 ms a batch may wait.
    assert not merging_pays(0.019, 0.0087 / 16, queued=16, coming=16, max_wait=0.005)
    assert merging_pays(0.019, 0.0087 / 16, queued=16, coming=16, max_wait=0.010)
    # Fewer coming back: a shorter wait, which fits.
    assert merging_pays(0.019, 0.0087 / 16, queued=16, coming=8, max_wait=0.005)


def test_unknown_costs_or_nobody_coming_never_hold_a_batch() -> None:
    assert not merging_pays(None, 0.003, queued=1, coming=16, max_wait=0.005)
    assert not merging_pays(0.0078, None, queued=1, coming=16, max_wait=0.005)
    assert not merging_pays(0.0078, 0.003, queued=1, coming=0, max_wait=0.005)


def test_a_busy_worker_gets_the_next_batch_once_all_are_back_unless_holding_it_pays() -> None:
    fast = {"fixed_seconds": 0.0078, "return_per_request": 0.003 / 16, "max_wait_seconds": 0.005}
    slow = {**fast, "return_per_request": 0.02 / 16}
    assert not Backlog(8, 96, 8, 16, **slow).send_early  # half the clients are still to come
    assert Backlog(16, 192, 16, 16, **slow).send_early
    assert not Backlog(16, 192, 16, 16, **fast).send_early  # held for the 16 coming back
    assert Backlog(16, 192, 16, 16).send_early  # costs not known yet: as soon as all are back


# -- what it is made from --------------------------------------------------------------------


def test_the_return_time_is_how_long_until_as_many_requests_have_come_over_their_number() -> None:
    times = ReturnTime()
    times.answered(10.0, 3)
    assert times.per_request is None and times.coming == 3
    times.arrival(10.004)
    times.arrival(10.006)
    assert times.per_request is None and times.coming == 1
    times.arrival(10.009)
    assert times.per_request == pytest.approx(0.003) and times.coming == 0
    times.arrival(10.010)  # more than were answered: no sample
    assert times.per_request == pytest.approx(0.003)


def test_a_batch_answered_before_all_came_back_counts_as_at_least_that_long() -> None:
    times = ReturnTime()
    times.answered(0.0, 4)
    times.arrival(0.001)
    times.answered(0.050, 2)  # only one of four back after 50 ms
    assert times.per_request == pytest.approx(0.050 / 4)
    assert times.coming == 2


def test_the_return_time_is_a_moving_average_and_a_lull_counts_as_a_bounded_wait() -> None:
    times = ReturnTime()
    for start in range(20):
        times.answered(start, 1)
        times.arrival(start + 0.004)
    assert times.per_request == pytest.approx(0.004)
    times.answered(100.0, 1)
    times.arrival(700.0)  # ten minutes without traffic
    assert times.per_request == pytest.approx(0.004 + 0.2 * (MAX_RETURN_SECONDS - 0.004))


def test_the_fixed_cost_outlives_traffic_of_one_size() -> None:
    cost = ForwardCost()
    for tokens in (10, 100, 10, 100, 10, 100):
        cost.observe(tokens, 0.09 + 0.001 * tokens)
    assert cost.fixed_seconds == pytest.approx(0.09)
    for _ in range(100):  # steady traffic in batches of one size: nothing to fit a line to
        cost.observe(100, 0.19)
    assert cost.fit() is None
    assert cost.fixed_seconds == pytest.approx(0.09)


# -- the batcher holding a batch for returning clients ---------------------------------------


def _batcher(known_costs: bool) -> Batcher:
    batcher = Batcher(
        "m",
        max_batch_size=32,
        max_batch_tokens=10_000,
        max_queue_tokens=10_000,
        observer=NullObserver(),
        max_wait_seconds=0.25,
    )
    if known_costs:  # forwards of 10 and 100 tokens: 200 ms fixed, 1 ms a token
        for tokens in (10, 100, 10, 100):
            batcher.warmed_up(tokens, 0.2 + 0.001 * tokens)
    return batcher


def _answer(batcher: Batcher, batch: Batch | None) -> None:
    assert batch is not None
    rows = np.zeros((len(batch.rows), DIMS), dtype=np.float32)
    batcher.complete(batch, rows, 0.2 + 0.001 * batch.padded_tokens)


async def _two_clients_in_turn(batcher: Batcher, back: float) -> int:
    """Two clients whose requests reach the queue in turn, each while the other's batch runs,
    each back `back` seconds after its answer: how many requests the third batch serves."""
    loop = asyncio.get_running_loop()

    def request() -> Job:
        job = Job(ROW, DIMS, loop)
        batcher.submit(job)
        return job

    request()
    first = await asyncio.to_thread(batcher.take, always)
    request()  # the other client's, while the first batch runs
    _answer(batcher, first)
    second = await asyncio.to_thread(batcher.take, always)  # nothing known of returns yet: at once
    await asyncio.sleep(back)
    back_first = request()  # the first client is back
    _answer(batcher, second)
    third = asyncio.ensure_future(asyncio.to_thread(batcher.take, always))
    await asyncio.sleep(back)
    request()  # the second client is back
    taken = await third
    assert taken is not None and back_first in taken.jobs
    return len(taken.jobs)


def test_a_queued_request_waits_for_the_client_coming_back_when_one_forward_for_both_pays() -> None:
    # Each back in 30 ms (both: 60 ms), a forward's fixed cost 200 ms: the idle worker waits,
    # and one forward serves both.
    assert asyncio.run(_two_clients_in_turn(_batcher(known_costs=True), back=0.03)) == 2


def test_a_queued_request_goes_at_once_when_its_clients_come_back_slower_than_a_forward_costs() -> None:
    # Each back in 150 ms: both, 300 ms, cost more than the 200 ms a second forward does.
    assert asyncio.run(_two_clients_in_turn(_batcher(known_costs=True), back=0.15)) == 1


def test_a_queued_request_goes_at_once_while_the_model_s_costs_are_not_known() -> None:
    assert asyncio.run(_two_clients_in_turn(_batcher(known_costs=False), back=0.03)) == 1
