"""Readiness, aliases sharing one loaded model, the generated key, and disabled auth."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from app.config import Alias, AuthSettings
from app.engine.engine import EmbeddingEngine
from app.server import create_app
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.fake_backend import FakeLoader
from tests.serving import free_port, run_gateway, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def test_aliases_share_one_model_and_carry_their_instruction(tmp_path: Path) -> None:
    loader = FakeLoader(str(tmp_path))
    base = settings_with().models[0]
    entry = msgspec.structs.replace(base, aliases=[Alias(name="minilm-query", instruction="query: ")])
    with run_gateway(settings_with(models=[entry]), key=TEST_KEY, loader=loader) as gw:
        listing = httpx.get(f"{gw.v1}/models", headers=gw.headers()).json()
        assert [m["id"] for m in listing["data"]] == [MINILM, "minilm-query"]
        # Once for both names: the tokenizer once, the weights once per worker (the model's
        # worker and the Batch API's background worker, which loads after /ready).
        deadline = time.monotonic() + 60
        while True:
            workers = httpx.get(f"{gw.url}/ready").json()["workers"][MINILM]
            if all(w["serving"] for w in workers) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [w["lane"] for w in workers] == ["interactive", "background"]
        assert loader.loads(MINILM) == ["tokenizer", "model", "model"]

        def embed(model: str, **extra: object) -> list[float]:
            body = {"model": model, "input": "what is a kitten", "encoding_format": "float", **extra}
            response = httpx.post(f"{gw.v1}/embeddings", headers=gw.headers(), json=body, timeout=60)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == model
            vector: list[float] = response.json()["data"][0]["embedding"]
            return vector

        via_alias = embed("minilm-query")
        np.testing.assert_allclose(via_alias, embed(MINILM, instruction="query: "), atol=1e-6)
        assert not np.allclose(via_alias, embed(MINILM), atol=1e-3)
        # A request's instruction overrides the alias's, including with "" (none).
        np.testing.assert_allclose(embed("minilm-query", instruction=""), embed(MINILM), atol=1e-6)


def test_ready_is_503_until_models_are_loaded(tmp_path: Path) -> None:
    loader = FakeLoader(str(tmp_path))
    held = loader.controls(MINILM).dir / "load_closed"
    held.touch()  # loading waits until the file is gone

    import uvicorn

    settings = settings_with()
    engine = EmbeddingEngine(settings, loader)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        not_ready = httpx.get(f"{url}/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["models"] == {MINILM: "loading"}
        early = httpx.post(
            f"{url}/v1/embeddings",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            json={"model": MINILM, "input": "x"},
        )
        assert early.status_code == 503 and early.headers["retry-after"] == "5"
        assert early.json()["error"]["type"] == "server_error"
        held.unlink()
        engine.wait_loaded(60)
        assert httpx.get(f"{url}/ready").status_code == 200
    finally:
        held.unlink(missing_ok=True)
        server.should_exit = True
        thread.join(10)


@pytest.fixture()
def served_without_keys() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
    env["GATEWAY__SERVER__DRAIN_SECONDS"] = "0"  # SIGTERM below: no drain period to wait out
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(30)


def test_cli_serve_generates_and_prints_a_key_once(
    served_without_keys: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = served_without_keys
    assert process.stdout is not None
    key = None
    deadline = time.monotonic() + 120
    lines: list[str] = []
    while key is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"generated key: (sk-\S+)", line)
        key = found.group(1) if found else None
    assert key is not None, "".join(lines)
    wait_ready(url, deadline - time.monotonic(), lambda: process.poll() is None, lambda: "".join(lines))
    body = {"model": MINILM, "input": "hello"}
    assert httpx.post(f"{url}/v1/embeddings", json=body).status_code == 401
    assert (
        httpx.post(
            f"{url}/v1/embeddings", json=body, headers={"Authorization": "Bearer sk-guess"}
        ).status_code
        == 401
    )
    ok = httpx.post(f"{url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    process.terminate()
    rest = process.communicate(timeout=30)[0]
    assert ("".join(lines) + rest).count(key) == 1


def test_disabled_auth_serves_without_a_key_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), run_gateway(settings_with(auth=AuthSettings(enabled=False))) as gw:
        response = httpx.post(f"{gw.v1}/embeddings", json={"model": MINILM, "input": "open"}, timeout=60)
        assert response.status_code == 200
    assert any("authentication is disabled" in r.getMessage() for r in caplog.records)
