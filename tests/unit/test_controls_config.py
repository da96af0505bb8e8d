"""Settings of the gateway controls: validation and masked secrets."""

from __future__ import annotations

import json

import pytest

from app.config import expand_path, load_settings, masked


def test_controls_defaults_are_documented_and_safe() -> None:
    settings = load_settings(env={"XDG_STATE_HOME": "/srv/state"})
    assert settings.auth.key_file == "/srv/state/llm2vec-gateway/keys.json"
    assert settings.limits.storage == "memory://"
    # No limit unless the config or the key sets one: self-hosted capacity is the hardware's.
    assert (settings.limits.rpm, settings.limits.tpm, settings.limits.window_seconds) == (0, 0, 60)
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
    ("value", "env", "expected"),
    [
        ("$XDG_STATE_HOME/gw/keys.json", {"XDG_STATE_HOME": "/s", "HOME": "/h"}, "/s/gw/keys.json"),
        ("${XDG_STATE_HOME}/gw/keys.json", {"XDG_STATE_HOME": "/s"}, "/s/gw/keys.json"),
        ("$XDG_STATE_HOME/gw/keys.json", {"HOME": "/h"}, "/h/.local/state/gw/keys.json"),  # the XDG default
        (
            "$XDG_STATE_HOME/gw/keys.json",
            {"XDG_STATE_HOME": "", "HOME": "/h"},
            "/h/.local/state/gw/keys.json",
        ),
        ("~/keys.json", {"HOME": "/h"}, "/h/keys.json"),
        ("/etc/gw/keys.json", {"XDG_STATE_HOME": "/s", "HOME": "/h"}, "/etc/gw/keys.json"),
        ("keys-$XDG_STATE_HOME.json", {"XDG_STATE_HOME": "/s"}, "keys-$XDG_STATE_HOME.json"),  # only a prefix
    ],
)
def test_key_file_paths_expand_from_the_given_environment(
    value: str, env: dict[str, str], expected: str
) -> None:
    assert expand_path(value, env) == expected
    settings = load_settings(env={**env, "GATEWAY__AUTH__KEY_FILE": f'"{value}"'})
    assert settings.auth.key_file == expected
