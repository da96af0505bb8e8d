from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings, masked

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_serves_bundled_minilm_offline_on_cpu() -> None:
    settings = load_settings()
    (model,) = settings.models
    assert model.kind == "encoder" and model.base_model == "bundled:all-MiniLM-L6-v2"
    assert model.device == "auto" and model.dtype == "auto" and model.normalize
    assert settings.auth.enabled and settings.server.host == "127.0.0.1"


def test_environment_overrides_fields_and_list_items() -> None:
    settings = load_settings(
        env={
            "GATEWAY__SERVER__PORT": "9000",
            "GATEWAY__MODELS__0__DEVICE": "cuda:1",
            "GATEWAY__MODELS__0__NORMALIZE": "false",
            "GATEWAY__ENGINE__MAX_BATCH_SIZE": "8",
            "UNRELATED": "1",
        }
    )
    assert settings.server.port == 9000
    assert settings.models[0].device == "cuda:1" and settings.models[0].normalize is False
    assert settings.engine.max_batch_size == 8


def test_plaintext_key_from_environment_is_masked() -> None:
    settings = load_settings(env={"GATEWAY_API_KEY": "sk-dev-secret"})
    assert [(k.name, k.key) for k in settings.auth.keys] == [("env", "sk-dev-secret")]
    assert "sk-dev-secret" not in json.dumps(masked(settings))


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ("[server]\nport = 'x'", "$.server.port"),
        ("[server]\nprot = 1", "$.server"),
        ("[[models]]\nname = 'a'\nbase_model = 'b'\npooling = 'max'", "$.models[0].pooling"),
        ("[[models]]\nname = 'a'", "$.models[0]"),
        ("[[auth.keys]]\nname = 'a'\nsha256 = 'nothex'", "auth.keys[0].sha256"),
        ("[[auth.keys]]\nname = 'a'", "auth.keys[0]"),
        (
            "[[models]]\nname = 'a'\nbase_model = 'b'\n[[models]]\nname = 'a'\nbase_model = 'c'",
            "models[1]",
        ),
        ("[[models]]\nname = 'a'\nbase_model = 'b'\nkind = 'encoder'\nadapters = ['x']", "models[0]"),
        # the gateway controls
        ("[metrics]\nenabled = true\nport = 0", "auth.admin_key_sha256"),
        ("[metrics]\nenabled = true\nport = 8000", "metrics.port"),
        ("[limits]\nrpm = -1", "limits"),
        ("[limits]\nstorage = 'memcached://x'", "limits.storage"),
        ("[limits]\non_storage_error = 'maybe'", "$.limits.on_storage_error"),
        ("[limits]\nkey_prefix = 'has space'", "limits.key_prefix"),
        ("[auth]\nadmin_key_sha256 = 'short'", "auth.admin_key_sha256"),
        ("[[auth.keys]]\nname = 'a'\nkey = 'sk-a'\nrpm = -2", "auth.keys[0]"),
        ("[server]\nlog_format = 'xml'", "$.server.log_format"),
        # HTTP framing
        ("[server]\nmax_header_bytes = 100", "server.max_header_bytes"),
        ("[server]\nmax_header_bytes = 2000000", "server.max_header_bytes"),
        ("[server]\nheader_timeout_seconds = 0", "server: header, body and keep-alive"),
        ("[server]\nkeep_alive_timeout_seconds = -1", "server: header, body and keep-alive"),
        # the graceful drain: it must end before the shutdown timeout does
        ("[server]\ndrain_seconds = 30\nshutdown_timeout_seconds = 30", "server.drain_seconds"),
        ("[server]\ndrain_seconds = -1", "server.drain_seconds"),
        # where Batch API work runs
        ("[batch]\nworker = 'gpu'", "$.batch.worker"),
        ("[batch]\nworker_threads = 0", "batch.worker_threads"),
    ],
)
def test_invalid_settings_name_the_field(tmp_path: Path, toml: str, path: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(file, env={})
    assert path in str(info.value)


def test_example_configs_are_valid() -> None:
    examples = sorted((ROOT / "config").glob("*.toml"))
    assert len(examples) >= 4
    for example in examples:
        load_settings(example, env={})


def test_check_config_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")} | {
        "GATEWAY_API_KEY": "sk-hidden"
    }
    ok = subprocess.run(
        [sys.executable, "-m", "app", "check-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["models"][0]["name"] == "all-MiniLM-L6-v2"
    assert "sk-hidden" not in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nmax_batch_size = 'many'\n")
    failed = subprocess.run(
        [sys.executable, "-m", "app", "check-config", str(bad)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode != 0
    assert "$.engine.max_batch_size" in failed.stderr
