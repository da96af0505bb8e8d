"""A fleet on loopback, all real: redis-server, three `python -m app serve` processes sharing it
and one key file, and HAProxy (deploy/haproxy/haproxy.cfg) in front, checking each /ready.

The tests run in file order against one fleet; the last one kills a replica.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.auth.key_file import create_key, revoke_key
from tests.conftest import MINILM
from tests.haproxy import HAProxy
from tests.load import Load, Outcome
from tests.processes import GatewayProcess
from tests.redis_server import RedisServer

REPLICAS = 3
DRAIN = 1.0  # longer than HAProxy takes to see /ready fail (fall 2 x inter 200ms)
TIMEOUT = 15.0
BODY = {"model": MINILM, "input": ["a short text about kittens"]}


@dataclass
class Fleet:
    haproxy: HAProxy
    gateways: list[GatewayProcess]
    env: dict[str, str]
    key_file: Path
    load_key: str
    workdir: Path

    @property
    def embeddings(self) -> str:
        return f"{self.haproxy.url}/v1/embeddings"

    def restart(self, i: int) -> GatewayProcess:
        old = self.gateways[i]
        self.gateways[i] = GatewayProcess(self.env, old.log, port=old.port)
        return self.gateways[i]


def _name(i: int) -> str:
    return f"gateway-{i}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    key_file = workdir / "keys.json"
    load_key = create_key(key_file, "load", rpm=0, tpm=0)  # unlimited: the load tests' key
    with ExitStack() as stack:
        redis = RedisServer()
        redis.start()
        stack.callback(redis.stop)
        env = {
            "GATEWAY__AUTH__KEY_FILE": str(key_file),
            "GATEWAY__LIMITS__STORAGE": redis.url,
            "GATEWAY__SERVER__DRAIN_SECONDS": str(DRAIN),
            "GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS": str(TIMEOUT),
            "GATEWAY__ENGINE__TORCH_THREADS": "1",
            "GATEWAY__ENGINE__MAX_BATCH_SIZE": "8",
            "GATEWAY__ENGINE__MAX_BATCH_TOKENS": "1024",
        }
        fleet = Fleet(None, [], env, key_file, load_key, workdir)  # type: ignore[arg-type]
        for i in range(REPLICAS):
            fleet.gateways.append(GatewayProcess(env, workdir / f"{_name(i)}.log"))
        # Whichever process holds a slot at the end (restarts replace them) is stopped.
        stack.callback(lambda: [g.stop() for g in fleet.gateways])
        fleet.haproxy = HAProxy({_name(i): g.port for i, g in enumerate(fleet.gateways)}, workdir)
        stack.callback(fleet.haproxy.stop)
        for i, gateway in enumerate(fleet.gateways):
            gateway.wait_ready()
            fleet.haproxy.wait_status(_name(i), "UP", timeout=10)
        yield fleet


def _accepted_everywhere(fleet: Fleet, key: str, timeout: float = 10) -> None:
    """Wait until every replica has read `key` from the key file (/v1/models counts no limit)."""
    deadline = time.monotonic() + timeout
    for gateway in fleet.gateways:
        while httpx.get(f"{gateway.url}/v1/models", headers=_auth(key)).status_code != 200:
            assert time.monotonic() < deadline, "a replica never read the new key"
            time.sleep(0.05)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _acceptable(outcome: Outcome) -> bool:
    """200, or the gateway's own 503/429 with Retry-After that a client may retry."""
    return outcome.status == 200 or (outcome.status in (429, 503) and outcome.retry_after is not None)


def test_a_keys_rpm_limit_holds_across_the_fleet(fleet: Fleet) -> None:
    limit = 12
    key = create_key(fleet.key_file, "fleet-rpm", rpm=limit, tpm=0)
    _accepted_everywhere(fleet, key)
    responses = [httpx.post(fleet.embeddings, json=BODY, headers=_auth(key), timeout=60) for _ in range(30)]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == limit, statuses
    assert statuses == [200] * limit + [429] * (30 - limit)
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses[limit:])
    assert responses[limit].json()["error"]["code"] == "rate_limit_exceeded"
    served_by = {r.headers["x-served-by"] for r in responses[:limit]}
    assert len(served_by) >= 2, served_by  # one limit, counted in Redis by several replicas


def test_a_revoked_key_is_refused_by_every_replica_within_about_a_second(fleet: Fleet) -> None:
    key = create_key(fleet.key_file, "fleet-revoke")
    _accepted_everywhere(fleet, key)
    revoke_key(fleet.key_file, "fleet-revoke")
    revoked = time.monotonic()
    took = []
    for gateway in fleet.gateways:
        while (status := httpx.get(f"{gateway.url}/v1/models", headers=_auth(key)).status_code) != 401:
            assert status == 200 and time.monotonic() - revoked < 5, status
            time.sleep(0.02)
        took.append(time.monotonic() - revoked)
    assert max(took) < 2.0, took  # polled every second (auth.key_file_poll_seconds)
    through = [httpx.post(fleet.embeddings, json=BODY, headers=_auth(key)).status_code for _ in range(6)]
    assert through == [401] * 6


def test_a_rolling_restart_under_load_loses_nothing(fleet: Fleet) -> None:
    with Load(fleet.embeddings, fleet.load_key, BODY, clients=3, max_requests=20000, max_seconds=400) as load:
        time.sleep(0.5)
        for i in range(REPLICAS):
            gateway = fleet.gateways[i]
            gateway.signal(signal.SIGTERM)
            fleet.haproxy.wait_status(_name(i), "DOWN", timeout=DRAIN + 2)
            assert gateway.wait_exit(TIMEOUT + 5) == 0, gateway.log.read_text()
            restarted = fleet.restart(i)
            restarted.wait_ready()
            fleet.haproxy.wait_status(_name(i), "UP", timeout=10)
        back = time.monotonic()
        time.sleep(1.0)
        outcomes = load.stop()
    assert len(outcomes) >= 50
    assert [o for o in outcomes if not _acceptable(o)] == []
    after = {o.replica for o in outcomes if o.sent > back}
    assert after == {_name(i) for i in range(REPLICAS)}, after  # every restarted replica serves


def test_a_killed_replica_costs_at_most_the_requests_it_held(fleet: Fleet) -> None:
    clients = 4
    with Load(fleet.embeddings, fleet.load_key, BODY, clients=clients, max_seconds=60) as load:
        time.sleep(1.0)
        fleet.gateways[0].signal(signal.SIGKILL)
        fleet.haproxy.wait_status(_name(0), "DOWN", timeout=5)
        down = time.monotonic()
        time.sleep(1.5)
        outcomes = load.stop()
    assert fleet.gateways[0].wait_exit(5) == -signal.SIGKILL
    failed = [o for o in outcomes if o.status != 200]
    # Each client has one request in flight: the killed replica held at most `clients`.
    assert len(failed) <= clients, failed
    later = [o for o in outcomes if o.sent > down]
    assert len(later) >= 5 and all(o.status == 200 for o in later)
    assert {o.replica for o in later} == {_name(1), _name(2)}
