"""The key CLI end to end against a running server: create, use, list, revoke, reload."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

from app.config import Alias, ApiKey, AuthSettings
from tests.conftest import MINILM, settings_with
from tests.processes import ROOT, gateway_processes
from tests.serving import Gateway, run_gateway


def keys_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
    return subprocess.run(
        [sys.executable, "-m", "app", "keys", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def create(path: Path, name: str, *extra: str) -> str:
    done = keys_cli("create", "--key-file", str(path), "--name", name, *extra)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("sk-") and "\n" not in key
    assert key not in done.stderr
    return key


def embed(gw: Gateway, key: str, model: str = MINILM) -> httpx.Response:
    return httpx.post(
        f"{gw.v1}/embeddings",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "input": "hello"},
        timeout=30,
    )


def wait_for_status(gw: Gateway, key: str, status: int, within: float = 10) -> float:
    """Seconds until `key` gets `status`; fails after `within`."""
    started = time.monotonic()
    while embed(gw, key).status_code != status:
        assert time.monotonic() - started < within, f"still not {status} after {within}s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_key_cli_create_use_list_revoke_on_a_running_server(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    alice = create(path, "alice", "--rpm", "100")
    auth = AuthSettings(key_file=str(path), key_file_poll_seconds=0.2)
    with run_gateway(settings_with(auth=auth)) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key=alice, max_retries=0)
        assert client.embeddings.create(model=MINILM, input="hi").usage.prompt_tokens > 0

        bob = create(path, "bob", "--tpm", "5000", "--models", MINILM)
        wait_for_status(gw, bob, 200)  # picked up without a restart

        listed = keys_cli("list", "--key-file", str(path))
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["NAME", "RPM", "TPM", "MODELS", "CREATED"]
        assert [line.split()[:4] for line in lines[1:]] == [
            ["alice", "100", "default", "all"],
            ["bob", "default", "5000", MINILM],
        ]
        as_json = json.loads(keys_cli("list", "--json", "--key-file", str(path)).stdout)
        assert [k["name"] for k in as_json] == ["alice", "bob"]

        # Revoking alice while bob's requests run: bob's never fail, alice gets 401 soon.
        failures: list[int] = []
        stop = threading.Event()

        def bob_traffic() -> None:
            while not stop.is_set():
                status = embed(gw, bob).status_code
                if status != 200:
                    failures.append(status)

        traffic = threading.Thread(target=bob_traffic)
        traffic.start()
        try:
            revoked = keys_cli("revoke", "--key-file", str(path), "alice")
            assert revoked.returncode == 0, revoked.stderr
            assert wait_for_status(gw, alice, 401) < 5
        finally:
            stop.set()
            traffic.join(30)
        assert failures == []
        body = embed(gw, alice).json()["error"]
        assert body["code"] == "invalid_api_key"
        assert keys_cli("revoke", "--key-file", str(path), "alice").returncode == 1

    text = path.read_text()
    for key in (alice, bob):
        assert key not in text and key[3:] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k["name"] for k in json.loads(text)["keys"]] == ["bob"]


def test_key_limited_to_some_models(tmp_path: Path) -> None:
    base = settings_with().models[0]
    entry = msgspec.structs.replace(base, aliases=[Alias(name="minilm-query", instruction="query: ")])
    auth = AuthSettings(keys=[ApiKey(name="narrow", key="sk-narrow-0123456789", models=["minilm-query"])])
    with run_gateway(settings_with(models=[entry], auth=auth)) as gw:
        headers = {"Authorization": "Bearer sk-narrow-0123456789"}
        listing = httpx.get(f"{gw.v1}/models", headers=headers).json()
        assert [m["id"] for m in listing["data"]] == ["minilm-query"]
        assert embed(gw, "sk-narrow-0123456789", "minilm-query").status_code == 200
        refused = embed(gw, "sk-narrow-0123456789", MINILM)
        assert refused.status_code == 404
        assert refused.json() == {
            "error": {
                "message": f"The model `{MINILM}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
        assert httpx.get(f"{gw.v1}/models/{MINILM}", headers=headers).status_code == 404
        client = openai.OpenAI(base_url=gw.v1, api_key="sk-narrow-0123456789", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model=MINILM, input="x")


def test_keys_cli_needs_a_key_file_and_refuses_bad_input(tmp_path: Path) -> None:
    no_file = keys_cli("list", env={"GATEWAY__AUTH__KEY_FILE": '""'})
    assert no_file.returncode == 2 and "auth.key_file" in no_file.stderr
    path = tmp_path / "keys.json"
    create(path, "a")
    again = keys_cli("create", "--key-file", str(path), "--name", "a")
    assert again.returncode == 1 and again.stdout == "" and "already exists" in again.stderr
    assert keys_cli("create", "--key-file", str(path), "--name", "b", "--rpm", "-1").returncode == 1


def test_serve_refuses_a_broken_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"name": "a"}]}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"],
        cwd=ROOT,
        env={**env, "GATEWAY__AUTH__KEY_FILE": f'"{path}"'},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid key file" in done.stderr and "sha256" in done.stderr


def test_keys_create_and_serve_share_the_default_key_file_with_no_flags(tmp_path: Path) -> None:
    """The documented workflow on the default config: `keys create`, then `make serve`."""
    state = tmp_path / "state"  # stands for ~/.local/state
    env = {"XDG_STATE_HOME": str(state)}
    done = keys_cli("create", "--name", "laptop", env=env)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert done.stdout == key + "\n" and key.startswith("sk-")  # the key alone on stdout
    path = state / "llm2vec-gateway" / "keys.json"
    assert f"in {path}" in done.stderr and key not in done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    listed = keys_cli("list", "--json", env=env)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["laptop"]
    with gateway_processes(env, logs=tmp_path) as (gw,):
        served = httpx.post(
            f"{gw.url}/v1/embeddings",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": MINILM, "input": "hello"},
            timeout=30,
        )
        wrong = httpx.post(
            f"{gw.url}/v1/embeddings", headers={"Authorization": "Bearer sk-nope"}, json={}, timeout=30
        )
        output = gw.stop()
    assert served.status_code == 200, served.text
    # No limits in the default config, none on the key: no x-ratelimit-* headers at all.
    assert not [h for h in served.headers if h.startswith("x-ratelimit")]
    assert wrong.status_code == 401
    assert "generated key" not in output  # the key file's key is in force: none is made up
