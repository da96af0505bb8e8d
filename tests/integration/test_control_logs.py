"""JSON request logs of a real run with managed keys: one line per request with its id, key
name and counts; no key and no input text anywhere in the output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.conftest import MINILM
from tests.integration.test_key_management import create, keys_cli
from tests.processes import gateway_processes

TEXTS = ["patient record 4711 diagnosis", "confidential merger plan zebra"]


def test_json_logs_of_a_run_with_managed_keys_hold_no_key_and_no_text(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    alice = create(path, "alice", "--rpm", "2")
    narrow = create(path, "narrow", "--models", "other-model")
    wrong = "sk-not-a-key-5f2b7c9d1e"
    env = {
        "GATEWAY__AUTH__KEY_FILE": f'"{path}"',
        "GATEWAY__AUTH__KEY_FILE_POLL_SECONDS": "0.2",
        "GATEWAY__SERVER__LOG_FORMAT": '"json"',
        "GATEWAY__SERVER__LOG_LEVEL": '"debug"',
    }
    with gateway_processes(env, logs=tmp_path) as (gw,):

        def call(key: str, texts: list[str], request_id: str) -> httpx.Response:
            return httpx.post(
                f"{gw.url}/v1/embeddings",
                headers={"Authorization": f"Bearer {key}", "x-request-id": request_id},
                json={"model": MINILM, "input": texts},
                timeout=30,
            )

        statuses = [
            call(alice, TEXTS, "req-ok"),
            call(alice, [TEXTS[0], ""], "req-invalid"),
            call(alice, TEXTS[1:], "req-limited"),
            call(narrow, TEXTS, "req-not-allowed"),
            call(wrong, TEXTS, "req-wrong-key"),
        ]
        assert [r.status_code for r in statuses] == [200, 400, 429, 404, 401]
        assert statuses[0].headers["x-request-id"] == "req-ok"
        assert keys_cli("revoke", "--key-file", str(path), "alice").returncode == 0
        deadline = time.monotonic() + 10
        while call(alice, TEXTS, "req-revoked").status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        output = gw.stop()

    for secret in [alice, narrow, wrong, *TEXTS, alice[3:], "patient", "merger"]:
        assert secret not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    # Every line through Python's logging is JSON (transformers writes some warnings itself).
    assert not [line for line in output.splitlines() if not line.startswith("{") and "app." in line]
    requests = {r["request_id"]: r for r in records if r.get("logger") == "app.requests"}
    ok = requests["req-ok"]
    assert (ok["key"], ok["model"], ok["inputs"], ok["status"]) == ("alice", MINILM, 2, 200)
    assert ok["tokens"] > 0 and ok["ms"] > 0 and "queue_ms" in ok and "compute_ms" in ok
    assert requests["req-limited"]["status"] == 429
    assert requests["req-not-allowed"]["key"] == "narrow" and requests["req-not-allowed"]["status"] == 404
    assert requests["req-revoked"]["status"] == 401
    assert any("key file reloaded" in r.get("message", "") for r in records)
