"""The limiter on its memory storage: OpenAI's headers, 429 body and token charging."""

from __future__ import annotations

import asyncio
import re

import pytest

from app.api.ratelimit import RateLimiter, format_duration
from app.auth.keys import KeyIdentity
from app.config import LimitsSettings
from app.errors import RateLimitError

RESET = re.compile(r"^(\d+m)?\d+(\.\d+)?s$|^\d+ms$")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.12, "120ms"),
        (1, "1s"),
        (59.5, "59.5s"),
        (1.1465, "1.147s"),
        (360, "6m0s"),
        (61.4, "1m1s"),
    ],
)
def test_durations_in_openais_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def _limiter(**changes: object) -> RateLimiter:
    unlimited: dict[str, object] = {"rpm": 0, "tpm": 0}  # whatever the configured defaults
    return RateLimiter(LimitsSettings(**(unlimited | changes)))  # type: ignore[arg-type]


def test_requests_per_window_then_openais_429() -> None:
    async def run() -> tuple[list[dict[str, str]], RateLimitError]:
        limiter = _limiter(rpm=3)
        await limiter.start()
        key = KeyIdentity("team-a")
        seen = [(await limiter.admit(key, "m")).headers for _ in range(3)]
        with pytest.raises(RateLimitError) as info:
            await limiter.admit(key, "m")
        # Another key has its own window; a per-key override wins over the default.
        assert (await limiter.admit(KeyIdentity("team-b", rpm=5), "m")).headers[
            "x-ratelimit-limit-requests"
        ] == "5"
        return seen, info.value

    seen, error = asyncio.run(run())
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "3" for h in seen)
    assert all(RESET.match(h["x-ratelimit-reset-requests"]) for h in seen)
    assert "x-ratelimit-limit-tokens" not in seen[0]  # tokens are unlimited
    assert (error.status_code, error.error_type, error.code, error.param) == (
        429,
        "requests",
        "rate_limit_exceeded",
        None,
    )
    assert re.fullmatch(
        r"Rate limit reached for m for key `team-a` on requests per min \(RPM\): Limit 3, Used 3, "
        r"Requested 1\. Please try again in (\d+(\.\d+)?s|\d+ms)\.",
        error.message,
    ), error.message
    assert 1 <= int(error.headers["retry-after"]) <= 60
    assert error.headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_are_charged_after_the_request_and_refuse_the_next() -> None:
    async def run() -> tuple[dict[str, str], RateLimitError]:
        limiter = _limiter(tpm=100, window_seconds=30)
        await limiter.start()
        key = KeyIdentity("team-a")
        permit = await limiter.admit(key, "m")
        await limiter.charge(permit, 40)
        after_first = dict(permit.headers)
        permit = await limiter.admit(key, "m")
        await limiter.charge(permit, 90)  # charged in full, past the limit
        with pytest.raises(RateLimitError) as info:
            await limiter.admit(key, "m")
        return after_first, info.value

    headers, error = asyncio.run(run())
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "60"
    assert error.error_type == "tokens"
    assert error.message.startswith(
        "Rate limit reached for m for key `team-a` on tokens per 30s: Limit 100, Used 130. "
        "Please try again in "
    )
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"


def test_unlimited_keys_get_no_headers() -> None:
    async def run() -> dict[str, str]:
        limiter = _limiter()
        await limiter.start()
        permit = await limiter.admit(KeyIdentity("a"), "m")
        await limiter.charge(permit, 10)
        return permit.headers

    assert asyncio.run(run()) == {}
