"""The Prometheus endpoint after known traffic: counts and token totals per key."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.config import ApiKey, AuthSettings, MetricsSettings
from tests.conftest import MINILM, settings_with
from tests.processes import gateway_processes
from tests.serving import free_port, run_gateway

ALICE, BOB, ADMIN = "sk-alice-0123456789", "sk-bob-0123456789", "sk-admin-0123456789"
AUTH = AuthSettings(
    keys=[ApiKey(name="alice", key=ALICE), ApiKey(name="bob", key=BOB, rpm=1)], admin_key=ADMIN
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def embed(url: str, key: str, text: str | list[str], model: str = MINILM) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/embeddings",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "input": text},
        timeout=30,
    )


def test_metrics_count_requests_and_tokens_per_key() -> None:
    port = free_port()
    settings = settings_with(auth=AUTH, metrics=MetricsSettings(enabled=True, port=port))
    with run_gateway(settings) as gw:
        alice_tokens = sum(
            embed(gw.url, ALICE, text).json()["usage"]["prompt_tokens"] for text in ("one", "two three four")
        )
        bob_tokens = embed(gw.url, BOB, "five six").json()["usage"]["prompt_tokens"]
        assert embed(gw.url, BOB, "over the limit").status_code == 429
        assert embed(gw.url, "sk-wrong", "x").status_code == 401
        assert embed(gw.url, ALICE, "x", model="no-such-model").status_code == 404
        assert httpx.get(f"{gw.v1}/models", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert scraped.status_code == 200
    found = samples(scraped.text)
    total = "gateway_requests_total"
    assert value(found, total, model=MINILM, key="alice", status="200") == 2
    assert value(found, total, model=MINILM, key="bob", status="200") == 1
    assert value(found, total, model=MINILM, key="bob", status="429") == 1
    assert value(found, total, model="", key="", status="401") == 1
    assert value(found, total, model="unknown", key="alice", status="404") == 1  # client names stay out
    assert value(found, total, model="", key="alice", status="200") == 1  # GET /v1/models
    assert sum(v for (name, _), v in found.items() if name == total) == 7
    tokens = "gateway_prompt_tokens_total"
    assert value(found, tokens, model=MINILM, key="alice") == alice_tokens
    assert value(found, tokens, model=MINILM, key="bob") == bob_tokens
    assert value(found, "gateway_request_duration_seconds_count", model=MINILM) == 4
    assert value(found, "gateway_queue_wait_seconds_count", model=MINILM) == 3
    assert value(found, "gateway_compute_seconds_count", model=MINILM) == 3
    assert value(found, "gateway_models_loaded", model=MINILM) == 1
    # The engine's own observations: three one-text requests sent one after another are
    # three forward passes of one row each, whose padded tokens are the requests' tokens.
    assert value(found, "gateway_batch_size_count", model=MINILM) == 3
    assert value(found, "gateway_batch_size_sum", model=MINILM) == 3
    assert value(found, "gateway_batch_tokens_sum", model=MINILM) == alice_tokens + bob_tokens
    assert value(found, "gateway_batch_duration_seconds_count", model=MINILM) == 3
    assert ("gateway_queue_requests", frozenset({("model", MINILM)})) in found


def test_metrics_on_the_api_port_need_the_admin_key() -> None:
    settings = settings_with(auth=AUTH, metrics=MetricsSettings(enabled=True, port=0))
    with run_gateway(settings) as gw:
        embed(gw.url, ALICE, "counted")
        missing = httpx.get(f"{gw.url}/metrics")
        api_key = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {ALICE}"})
        admin = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert missing.status_code == 401 and api_key.status_code == 401
    assert api_key.json()["error"]["code"] == "invalid_api_key"
    assert admin.status_code == 200 and admin.headers["content-type"].startswith("text/plain")
    assert value(samples(admin.text), "gateway_requests_total", model=MINILM, key="alice", status="200") == 1


def test_metrics_are_off_by_default() -> None:
    with run_gateway(settings_with(auth=AUTH)) as gw:
        for key in (ALICE, ADMIN):  # no route at all, whoever asks
            response = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 404, response.text
            assert response.json()["error"]["message"] == "Invalid URL (GET /metrics)"


def test_batch_and_queue_metrics_from_the_engine(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {
        "GATEWAY_API_KEY": ALICE,
        "GATEWAY__METRICS__ENABLED": "true",
        "GATEWAY__METRICS__PORT": str(metrics_port),
    }
    with gateway_processes(env, logs=tmp_path) as (gw,):
        for text in ("a", ["b", "c", "d"]):
            assert embed(gw.url, ALICE, text).status_code == 200
        found = samples(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
    assert value(found, "gateway_batch_size_sum", model=MINILM) >= 4
    assert value(found, "gateway_batch_tokens_count", model=MINILM) >= 1
    assert ("gateway_queue_requests", frozenset({("model", MINILM)})) in found


def test_the_costs_the_engine_batches_by_are_exported() -> None:
    """A forward's fitted fixed cost and how soon requests come back (app.engine.pipelining),
    once forwards of several sizes have run and a client has come back after its answers."""
    port = free_port()
    settings = settings_with(auth=AUTH, metrics=MetricsSettings(enabled=True, port=port))
    long = " ".join(f"word{i}" for i in range(120))
    with run_gateway(settings) as gw:
        for text in ("one", long, "two", long + " more", "three", long + " again"):
            assert embed(gw.url, ALICE, text).status_code == 200
        found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    fixed = found[("gateway_forward_fixed_seconds", frozenset({("model", MINILM)}))]
    back = found[("gateway_request_return_seconds", frozenset({("model", MINILM)}))]
    assert 0 <= fixed < 1 and 0 < back < 5
