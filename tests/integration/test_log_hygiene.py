"""No API key and no input text ever reaches a log, on success or on error."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import MINILM
from tests.processes import GatewayProcess

KEY = "sk-log-hygiene-7f3a9c1e5b"
WRONG_KEY = "sk-wrong-key-d41d8cd98f"
SECRET_TEXTS = ["patient record 4711 diagnosis", "confidential merger plan zebra", "x" * 300]


def test_logs_of_a_real_run_hold_no_key_and_no_text(tmp_path: Path) -> None:
    gateway = GatewayProcess(
        {"GATEWAY_API_KEY": KEY, "GATEWAY__SERVER__LOG_LEVEL": '"debug"'}, tmp_path / "gateway.log"
    )
    url = gateway.url
    try:
        gateway.wait_ready()
        auth = {"Authorization": f"Bearer {KEY}"}
        statuses = [
            httpx.post(f"{url}/v1/embeddings", headers=auth, json={"model": MINILM, "input": SECRET_TEXTS}),
            httpx.post(
                f"{url}/v1/embeddings",
                headers={"Authorization": f"Bearer {WRONG_KEY}"},
                json={"model": MINILM, "input": SECRET_TEXTS[0]},
            ),
            httpx.post(
                f"{url}/v1/embeddings", headers=auth, json={"model": "nope", "input": SECRET_TEXTS[1]}
            ),
            httpx.post(
                f"{url}/v1/embeddings", headers=auth, json={"model": MINILM, "input": [SECRET_TEXTS[1], ""]}
            ),
        ]
        assert [r.status_code for r in statuses] == [200, 401, 404, 400]
    finally:
        output = gateway.stop()
    assert "request_id=" in output and "key=env" in output  # the request lines were logged
    for secret in [KEY, WRONG_KEY, *SECRET_TEXTS]:
        assert secret not in output
    assert "patient" not in output and "merger" not in output
