"""deploy/kubernetes agrees with the gateway: its configs load, the pod's termination grace
covers the drain, the mounts are where the configs look, and the Secret is a valid key file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.auth.key_file import read_key_file
from app.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(path: Path, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in _documents(path) if doc["kind"] == kind]
    return found


CONFIGS = _one(KUBERNETES / "configmap.yaml", "ConfigMap")["data"]


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_each_deployment_runs_its_config_and_its_grace_covers_the_drain(variant: str, tmp_path: Path) -> None:
    deployment = _one(KUBERNETES / variant / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_name = container["args"][-1].rsplit("/", 1)[-1]
    assert config_name == f"{variant}.toml"
    file = tmp_path / config_name
    file.write_text(CONFIGS[config_name])
    settings = load_settings(file, {})

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + settings.server.shutdown_timeout_seconds
    assert settings.server.drain_seconds > 0
    assert pod["terminationGracePeriodSeconds"] > needed  # Kubernetes' SIGKILL comes after the drain

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert Path(settings.auth.key_file).parent == Path(mounts["keys"])
    assert volumes["keys"]["secret"]["secretName"] == "llm2vec-gateway-keys"
    assert not any("subPath" in m for m in container["volumeMounts"])  # a subPath never updates
    assert container["args"][-1].startswith(mounts["config"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["http"], ports["metrics"]) == (settings.server.port, settings.metrics.port)
    assert settings.server.host == settings.metrics.host == "0.0.0.0"
    assert settings.limits.storage.startswith("redis://llm2vec-redis:")

    probes = {name: container[name]["httpGet"]["path"] for name in ("startupProbe", "readinessProbe")}
    assert probes == {"startupProbe": "/ready", "readinessProbe": "/ready"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (variant == "gpu")


def test_the_secret_is_a_key_file_that_opens_nothing(tmp_path: Path) -> None:
    secret = _one(KUBERNETES / "secret.yaml", "Secret")
    file = tmp_path / "keys.json"
    file.write_text(secret["stringData"]["keys.json"])
    (record,) = read_key_file(file)
    assert record.sha256 == "0" * 64  # a placeholder digest no key has
