"""What a client sends cannot forge or flood a log line: in real text and JSON runs, a model
or a path with newlines, NUL, U+2028 or a whole forged request line, and a 1 MB model, each
give exactly one request line, bounded in length."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from app.logs import MAX_LOGGED_CHARS
from tests.processes import GatewayProcess, gateway_processes

KEY = "sk-log-injection-3c1d9e"
FORGED = (
    "2026-01-01 00:00:00,000 INFO app.requests request_id=FORGED method=POST path=/v1/embeddings "
    "key=admin model=all-MiniLM-L6-v2 inputs=1 tokens=1 status=200"
)
MODELS = {
    "inj-newline": "x\n" + FORGED,
    "inj-controls": "x\r\n" + FORGED + "\x00\u2028\u0085\u202e\x1b[31m",
    "inj-fields": "x FORGED status=200 key=admin",
    "inj-huge": "FORGED" + "m" * 1_000_000,
}
# The unauthenticated case: the path is percent-decoded before it is logged.
PATH_ID, PATH = "inj-path", "/v1/models/x%0AFORGED%20status=200%20key=admin%0D%00"
FIELDS = [
    "request_id",
    "method",
    "path",
    "key",
    "model",
    "inputs",
    "tokens",
    "status",
    "ms",
    "queue_ms",
    "compute_ms",
]
# name=value, the value plain or quoted with backslash escapes.
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?: |$)')
# Bounded: the fixed fields plus a few values of at most MAX_LOGGED_CHARS (escaped: x6 at worst).
MAX_LINE = 400 + 3 * 6 * (MAX_LOGGED_CHARS + 30)


def _send_hostile_requests(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for request_id, model in MODELS.items():
            response = client.post(
                "/v1/embeddings",
                headers={"Authorization": f"Bearer {KEY}", "x-request-id": request_id},
                json={"model": model, "input": "hello"},
            )
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "model_not_found"
        response = client.get(PATH, headers={"x-request-id": PATH_ID})
        assert response.status_code == 401, response.text


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The whole output of a text-log run and of a JSON-log run, each sent the same requests."""
    logs = tmp_path_factory.mktemp("logs")
    envs = [{"GATEWAY_API_KEY": KEY, "GATEWAY__SERVER__LOG_FORMAT": f'"{fmt}"'} for fmt in ("text", "json")]
    with gateway_processes(*envs, logs=logs) as (text, jsonl):
        _send_hostile_requests(text)
        _send_hostile_requests(jsonl)
        return text.stop(), jsonl.stop()


def test_text_log_has_one_escaped_bounded_line_per_request(outputs: tuple[str, str]) -> None:
    lines = outputs[0].split("\n")
    # Whatever a client sent, "FORGED" shows only inside our own request lines, one each.
    forged = [line for line in lines if "FORGED" in line]
    ids = [*MODELS, PATH_ID]
    assert len(forged) == len(ids), forged
    for line, request_id in zip(forged, ids, strict=True):
        assert " INFO app.requests request_id=" + request_id + " " in line, line
        assert len(line) < MAX_LINE
        message = line.split(" INFO app.requests ", 1)[1]
        pairs = _PAIR.findall(message)
        # Parsed back into exactly our fields: no value ended early or passed for another field.
        assert [name for name, _ in pairs] == FIELDS, line
        assert "".join(f"{n}={v} " for n, v in pairs) == message + " "
    by_id = dict(zip(ids, forged, strict=True))
    assert 'model="x\\n2026-01-01 00:00:00,000 INFO app.requests request_id=FORGED' in by_id["inj-newline"]
    assert "\\r\\n" in by_id["inj-controls"] and "\\x00\\u2028\\x85\\u202e\\x1b[31m" in by_id["inj-controls"]
    assert 'model="x FORGED status=200 key=admin"' in by_id["inj-fields"]
    assert f'model="FORGED{"m" * (MAX_LOGGED_CHARS - 6)}...(1000006 chars)" ' in by_id["inj-huge"]
    assert 'path="/v1/models/x\\nFORGED status=200 key=admin\\r\\x00" key=- ' in by_id[PATH_ID]
    assert "status=401" in by_id[PATH_ID]
    for char in "\x00\r\u2028\u0085\u202e\x1b":
        assert char not in outputs[0]


def test_json_log_is_one_valid_object_per_line_with_the_values_kept(outputs: tuple[str, str]) -> None:
    output = outputs[1]
    # Split on newlines only, as log shippers do; U+2028 and friends stay escaped.
    lines = [line for line in output.split("\n") if line]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert not [line for line in lines if "FORGED" in line and not line.startswith("{")]
    for char in "\x00\r\u2028\u0085\u202e\x1b":
        assert char not in output
    requests = {r["request_id"]: r for r in records if r.get("logger") == "app.requests"}
    for request_id in ["inj-newline", "inj-controls", "inj-fields"]:
        assert requests[request_id]["model"] == MODELS[request_id]
        assert requests[request_id]["status"] == 404
    huge = requests["inj-huge"]["model"]
    assert huge == f"FORGED{'m' * (MAX_LOGGED_CHARS - 6)}...(1000006 chars)"
    assert requests[PATH_ID]["path"] == "/v1/models/x\nFORGED status=200 key=admin\r\x00"
    assert requests[PATH_ID]["status"] == 401
    assert max(len(line) for line in lines if "FORGED" in line) < MAX_LINE
