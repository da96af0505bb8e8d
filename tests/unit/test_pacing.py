"""Forward pacing on its own: the speed estimate, the cap it gives, and when it applies."""

from __future__ import annotations

import pytest

from app.engine.pacing import INTERACTIVE_WINDOW_S, ForwardPace


def _forward(fixed: float, per_token: float, tokens: int) -> float:
    return fixed + per_token * tokens


@pytest.mark.parametrize(("fixed", "per_token"), [(0.005, 20e-6), (0.0, 50e-6), (0.02, 5e-6)])
def test_the_cap_converges_to_the_forward_that_lasts_the_target(fixed: float, per_token: float) -> None:
    pace = ForwardPace(max_batch_tokens=1_000_000, target_seconds=0.05)
    pace.completed(8192, _forward(fixed, per_token, 8192), 16384)  # the warm-up batch
    pace.request(1, now=0.0)
    for _ in range(60):  # batches filled to the cap they were planned under
        cap = pace.cap(now=0.0, bulk_queued=True)
        pace.completed(cap, _forward(fixed, per_token, cap), cap)
    assert pace.cap(now=0.0, bulk_queued=True) == pytest.approx((0.05 - fixed) / per_token, rel=0.02)


def test_batches_far_below_their_cap_do_not_move_the_estimate() -> None:
    pace = ForwardPace(max_batch_tokens=16384, target_seconds=0.05)
    pace.completed(8192, 0.41, 16384)
    before = pace.seconds_per_token
    for _ in range(20):  # one short text at a time: mostly fixed cost, slow per token
        pace.completed(8, 0.004, pace.timed_cap())
    assert pace.seconds_per_token == before


def test_short_forwards_only_while_interactive_requests_were_seen_lately_and_bulk_is_queued() -> None:
    pace = ForwardPace(max_batch_tokens=16384, target_seconds=0.05)
    pace.completed(8192, 0.4096, 16384)  # 50 us per token: 1000 tokens in 50 ms
    assert pace.timed_cap() == 1000
    assert pace.is_bulk(76_800) and not pace.is_bulk(12)
    pace.request(76_800, now=10.0)  # a bulk request (300 x 256 tokens) is not interactive
    assert pace.cap(now=10.0, bulk_queued=True) == 16384 and not pace.interactive(10.0)
    pace.request(12, now=10.0)
    assert pace.cap(now=10.0, bulk_queued=True) == 1000 and pace.interactive(10.0)
    # Interactive requests alone share full batches.
    assert pace.cap(now=10.0, bulk_queued=False) == 16384
    later = 10.0 + INTERACTIVE_WINDOW_S
    assert pace.cap(now=later, bulk_queued=True) == 16384 and not pace.interactive(later)


def test_pacing_off_or_a_fast_model_keeps_the_full_budget() -> None:
    off = ForwardPace(max_batch_tokens=16384, target_seconds=0.0)
    off.completed(8192, 0.41, 16384)
    off.request(12, now=0.0)
    assert off.cap(now=0.0, bulk_queued=True) == 16384 and not off.interactive(0.0)
    fast = ForwardPace(max_batch_tokens=16384, target_seconds=0.05)
    fast.completed(16384, 0.02, 16384)  # the whole budget in 20 ms
    fast.request(12, now=0.0)
    assert fast.cap(now=0.0, bulk_queued=True) == 16384 and not fast.interactive(0.0)
