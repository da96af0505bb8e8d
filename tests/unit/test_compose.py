"""deploy/compose/docker-compose.yml is a valid Compose file (against the Compose
Specification's JSON schema, vendored in tests/data) and agrees with the HAProxy config."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"
HAPROXY = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
SCHEMA = msgspec.json.decode((ROOT / "tests" / "data" / "compose-spec.json").read_bytes())


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _validate(document: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(SCHEMA)
    validator.check_schema(SCHEMA)
    validator(SCHEMA).validate(document)


def test_the_compose_file_follows_the_compose_specification() -> None:
    _validate(_compose())


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["services"]["gateway-0"].update(gpu_ids=["0"]),  # not a Compose field
        lambda d: d["services"]["redis"].update(read_only="yes"),
        lambda d: d.update(gateways=2),
    ],
)
def test_the_schema_refuses_what_compose_would(change: Any) -> None:
    document = copy.deepcopy(_compose())
    change(document)
    with pytest.raises(jsonschema.ValidationError):
        _validate(document)


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_one_replica_per_gpu_each_behind_haproxy_with_time_to_drain() -> None:
    services = _compose()["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) >= 2
    gpus = []
    for service in gateways.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
        env = service["environment"]
        assert env["GATEWAY__LIMITS__STORAGE"].startswith("redis://redis:")
        timeout = float(env["GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS"])
        assert _seconds(service["stop_grace_period"]) > timeout  # Docker's SIGKILL comes after the drain
        assert float(env["GATEWAY__SERVER__DRAIN_SECONDS"]) > 0
    assert sorted(gpus) == [str(i) for i in range(len(gateways))]  # each GPU once
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+):8000\b", HAPROXY.read_text(), re.MULTILINE)
    assert {name for name, _ in servers} == set(gateways) == {host for _, host in servers}
    assert any(v.startswith("../haproxy/haproxy.cfg:") for v in services["haproxy"]["volumes"])
