"""Settings of the gateway controls: validation and masked secrets."""

from __future__ import annotations

import json

from app.config import load_settings, masked


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
