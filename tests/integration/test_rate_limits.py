"""Per-key RPM and TPM over HTTP: OpenAI's headers and 429, the SDK's retry, Redis shared by
two gateway processes, and a Redis outage failing open or closed."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import openai
import pytest

from app.config import ApiKey, AuthSettings, LimitsSettings, Settings
from tests.conftest import MINILM, settings_with
from tests.processes import gateway_processes
from tests.redis_server import RedisServer
from tests.serving import Gateway, run_gateway

KEY = "sk-limited-0123456789abcdef"
RESET = re.compile(r"^(\d+m)?\d+(\.\d+)?s$|^\d+ms$")
HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


def limited(rpm: int = 0, tpm: int = 0, **limits: object) -> Settings:
    auth = AuthSettings(keys=[ApiKey(name="team-a", key=KEY, rpm=rpm or None, tpm=tpm or None)])
    # Unlimited unless a test says otherwise, whatever the configured defaults.
    unlimited: dict[str, object] = {"rpm": 0, "tpm": 0}
    return settings_with(auth=auth, limits=LimitsSettings(**(unlimited | limits)))  # type: ignore[arg-type]


def post(gw: Gateway, text: str = "hello world") -> httpx.Response:
    return httpx.post(
        f"{gw.v1}/embeddings",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": MINILM, "input": text},
        timeout=30,
    )


def test_rpm_limit_headers_and_openais_429() -> None:
    with run_gateway(limited(rpm=3, tpm=100_000)) as gw:
        answers = [post(gw) for _ in range(3)]
        refused = post(gw)
    assert [r.status_code for r in answers] == [200, 200, 200]
    for r in answers:
        assert all(name in r.headers for name in HEADERS), r.headers
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-limit-tokens"] == "100000"
        assert RESET.match(r.headers["x-ratelimit-reset-requests"])
        assert RESET.match(r.headers["x-ratelimit-reset-tokens"])
        assert r.headers["x-request-id"]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0"]
    tokens = answers[0].json()["usage"]["prompt_tokens"]
    assert [int(r.headers["x-ratelimit-remaining-tokens"]) for r in answers] == [
        100_000 - tokens * n for n in (1, 2, 3)
    ]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
    assert re.fullmatch(
        rf"Rate limit reached for {MINILM} for key `team-a` on requests per min \(RPM\): Limit 3, "
        r"Used 3, Requested 1\. Please try again in (\d+(\.\d+)?s|\d+ms)\.",
        error["message"],
    ), error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert all(name in refused.headers for name in HEADERS)


def test_tpm_limit_counts_usage_tokens() -> None:
    with run_gateway(limited(tpm=40)) as gw:
        first = post(gw, "one two three")
        used = first.json()["usage"]["prompt_tokens"]
        assert first.headers["x-ratelimit-remaining-tokens"] == str(40 - used)
        assert "x-ratelimit-limit-requests" not in first.headers  # requests are unlimited
        big = post(gw, "many words " * 30)  # admitted with tokens left, charged in full
        assert big.status_code == 200 and big.headers["x-ratelimit-remaining-tokens"] == "0"
        refused = post(gw)
    total = used + big.json()["usage"]["prompt_tokens"]
    assert total > 40
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert error["message"].startswith(
        f"Rate limit reached for {MINILM} for key `team-a` on tokens per min (TPM): Limit 40, Used {total}. "
    )
    assert int(refused.headers["retry-after"]) >= 1


def test_openai_sdk_retry_waits_for_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "app.requests"), run_gateway(limited(rpm=1, window_seconds=2)) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key=KEY, max_retries=1)
        client.embeddings.create(model=MINILM, input="first")
        started = time.monotonic()
        # Over the limit: a 429 with Retry-After (2 s here). The SDK's own backoff (at most
        # 0.5 s for a first retry) would come too early and fail; honouring Retry-After succeeds.
        second = client.embeddings.create(model=MINILM, input="second")
        elapsed = time.monotonic() - started
    assert second.usage.prompt_tokens > 0
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("path") == "/v1/embeddings"]
    assert [line["status"] for line in lines] == [200, 429, 200]
    refused_at = next(r.created for r in caplog.records if getattr(r, "fields", {}).get("status") == 429)
    retried_at = [r.created for r in caplog.records if getattr(r, "fields", {}).get("status") == 200][-1]
    assert retried_at - refused_at >= 1.9
    assert 1.9 <= elapsed < 10


def test_two_gateway_processes_share_one_redis_limit(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {
        "GATEWAY_API_KEY": KEY,
        "GATEWAY__LIMITS__RPM": "3",
        "GATEWAY__LIMITS__STORAGE": f'"{redis_server.url}"',
    }
    # A third gateway, of another deployment sharing the Redis, keeps its own counters.
    other = env | {"GATEWAY__LIMITS__KEY_PREFIX": "other-deployment"}
    with gateway_processes(env, env, other, logs=tmp_path) as (a, b, c):

        def call(url: str) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/embeddings",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"model": MINILM, "input": "shared"},
                timeout=30,
            )

        answers = [call(a.url), call(b.url), call(a.url), call(b.url), call(a.url)]
        separate = call(c.url)
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert separate.status_code == 200 and separate.headers["x-ratelimit-remaining-requests"] == "2"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0", "0"]
    assert answers[3].json()["error"]["type"] == "requests"


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_redis_outage_fails_as_configured_and_logs_once(
    redis_server: RedisServer, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = limited(rpm=100, storage=redis_server.url, on_storage_error=policy)
    with caplog.at_level(logging.INFO, "app.api.ratelimit"), run_gateway(settings) as gw:
        assert post(gw).headers["x-ratelimit-remaining-requests"] == "99"
        redis_server.stop()
        during = []
        for _ in range(4):  # spread over more than the 1 s between storage retries
            during.append(post(gw))
            time.sleep(0.4)
        redis_server.start()
        deadline = time.monotonic() + 10
        while (after := post(gw)).status_code != 200 or "x-ratelimit-limit-requests" not in after.headers:
            assert time.monotonic() < deadline, "limits not enforced again after Redis came back"
            time.sleep(0.2)
    if policy == "open":
        assert [r.status_code for r in during] == [200] * 4
        assert all("x-ratelimit-limit-requests" not in r.headers for r in during)
    else:
        assert [r.status_code for r in during] == [503] * 4
        assert during[0].json()["error"]["type"] == "server_error"
        assert during[0].headers["retry-after"] == "1"
    messages = [r.getMessage() for r in caplog.records if r.name == "app.api.ratelimit"]
    down = [m for m in messages if "unreachable" in m]
    assert len(down) == 1 and f"failing {policy}" in down[0], messages
    assert sum("reachable again" in m for m in messages) == 1
    # The restarted Redis is empty: the count started over.
    assert after.headers["x-ratelimit-remaining-requests"] == "99"
