"""Settings of the gateway controls: validation and masked secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings, masked


def test_controls_defaults_are_documented_and_safe() -> None:
    settings = load_settings(env={})
    assert settings.auth.key_file == "" and settings.limits.storage == "memory://"
    assert (settings.limits.rpm, settings.limits.tpm, settings.limits.window_seconds) == (3000, 1_000_000, 60)
    assert settings.limits.on_storage_error == "open"
    assert not settings.metrics.enabled and settings.metrics.host == "127.0.0.1"
    assert settings.server.log_format == "text"


def test_admin_key_and_redis_password_are_masked() -> None:
    settings = load_settings(
        env={
            "GATEWAY__AUTH__ADMIN_KEY": "sk-admin-secret",
            "GATEWAY__LIMITS__STORAGE": "redis://:hunter2@10.0.0.5:6379/0",
        }
    )
    shown = json.dumps(masked(settings))
    assert "sk-admin-secret" not in shown and "hunter2" not in shown
    assert "redis://:***@10.0.0.5:6379/0" in shown


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ("[metrics]\nenabled = true\nport = 0", "auth.admin_key_sha256"),
        ("[metrics]\nenabled = true\nport = 8000", "metrics.port"),
        ("[limits]\nrpm = -1", "limits"),
        ("[limits]\nstorage = 'memcached://x'", "limits.storage"),
        ("[limits]\non_storage_error = 'maybe'", "$.limits.on_storage_error"),
        ("[limits]\nkey_prefix = 'has space'", "limits.key_prefix"),
        ("[auth]\nadmin_key_sha256 = 'short'", "auth.admin_key_sha256"),
        ("[[auth.keys]]\nname = 'a'\nkey = 'sk-a'\nrpm = -2", "auth.keys[0]"),
        ("[server]\nlog_format = 'xml'", "$.server.log_format"),
    ],
)
def test_invalid_controls_settings_name_the_field(tmp_path: Path, toml: str, path: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(file, env={})
    assert path in str(info.value)
