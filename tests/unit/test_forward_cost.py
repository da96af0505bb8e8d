"""The forward cost model on its own: the line it fits to forwards, and when it declines to."""

from __future__ import annotations

import random

import pytest

from app.engine.forward_cost import MIN_ALLOWANCE, ForwardCost


@pytest.mark.parametrize(("fixed", "per_token"), [(0.0047, 0.00011), (0.018, 0.0001), (0.002, 0.0)])
def test_the_fit_recovers_fixed_and_per_token_costs(fixed: float, per_token: float) -> None:
    cost = ForwardCost()
    rng = random.Random(0)
    for _ in range(60):
        tokens = rng.choice([6, 40, 256, 512, 2048])
        cost.observe(tokens, (fixed + per_token * tokens) * rng.uniform(0.98, 1.02))
    fitted = cost.fit()
    if per_token == 0:  # a cost that does not grow with size: no reason to keep rows apart
        assert cost.padding_allowance() is None or cost.padding_allowance() > 10_000  # type: ignore[operator]
        return
    assert fitted is not None
    assert fitted[0] == pytest.approx(fixed, rel=0.1)
    assert fitted[1] == pytest.approx(per_token, rel=0.05)
    assert cost.padding_allowance() == pytest.approx(fixed / per_token, rel=0.15)


def test_no_limit_until_the_forwards_seen_vary_in_size() -> None:
    cost = ForwardCost()
    for _ in range(50):  # uniform traffic: one size only
        cost.observe(512, 0.06)
    assert cost.fit() is None and cost.padding_allowance() is None
    cost.observe(6, 0.005)
    cost.observe(256, 0.033)
    cost.observe(6, 0.005)
    assert cost.padding_allowance() is not None


def test_too_few_forwards_give_no_limit() -> None:
    cost = ForwardCost()
    cost.observe(6, 0.005)
    cost.observe(256, 0.033)
    assert cost.padding_allowance() is None


def test_a_fit_with_no_fixed_cost_still_allows_a_little_padding() -> None:
    cost = ForwardCost()
    for tokens in [8, 64, 256, 1024] * 5:
        cost.observe(tokens, 1e-4 * tokens)
    assert cost.padding_allowance() == MIN_ALLOWANCE


def test_old_forwards_fade() -> None:
    # The model got slower per token (another tenant on the host): the estimate follows.
    cost = ForwardCost()
    for tokens in [8, 256] * 20:
        cost.observe(tokens, 0.005 + 1e-4 * tokens)
    for tokens in [8, 256] * 40:
        cost.observe(tokens, 0.005 + 4e-4 * tokens)
    fitted = cost.fit()
    assert fitted is not None and fitted[1] == pytest.approx(4e-4, rel=0.05)
