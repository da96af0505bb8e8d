"""Every metric the Grafana dashboard and the autoscaling rule query is one the gateway exports,
as a real /metrics scrape shows it (histograms with their _bucket, _sum and _count series)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MINILM, TEST_KEY
from tests.processes import gateway_processes
from tests.serving import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "llm2vec-gateway.json"
AUTOSCALING = ROOT / "deploy" / "kubernetes" / "autoscaling"

_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names (inside {} or by/without) or durations (inside [])."""
    label_values = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*,.*\)\s*", expr)
    if label_values:  # Grafana's variable query
        return {label_values.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for found in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = found.group(1), found.group(2)
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{model=~"$model", x="y(z)"}[$__rate_interval])))'
        " / on (pod) group_left sum without (key) (b_total offset 5m) > bool 2 and c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names("label_values(gateway_requests_total, model)") == {"gateway_requests_total"}


def _expressions(node: Any) -> list[str]:
    """Every PromQL text in the dashboard: panel targets' `expr` and variables' queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            is_query = key == "query" and isinstance(value, str) and value.startswith("label_values(")
            if (key == "expr" and isinstance(value, str)) or is_query:
                found.append(value)
            else:
                found += _expressions(value)
    elif isinstance(node, list):
        for item in node:
            found += _expressions(item)
    return found


def _autoscaling_metrics() -> set[str]:
    hpa = yaml.safe_load((AUTOSCALING / "hpa.yaml").read_text())
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    adapter = yaml.safe_load((AUTOSCALING / "prometheus-adapter-rules.yaml").read_text())
    for rule in yaml.safe_load(adapter["data"]["config.yaml"])["rules"]:
        names |= metric_names(rule["seriesQuery"]) | {rule["name"]["as"]}
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names of a real scrape of `python -m app serve` after served and refused requests."""
    port = free_port()
    env = {
        "GATEWAY_API_KEY": TEST_KEY,
        "GATEWAY__METRICS__ENABLED": "true",
        "GATEWAY__METRICS__PORT": str(port),
    }
    with gateway_processes(env, logs=tmp_path_factory.mktemp("dashboard")) as (gw,):
        long = " ".join(f"word{i}" for i in range(120))
        # Forwards of several sizes, one after another: enough for the batching costs'
        # gauges (a fitted fixed cost, a request's return) to be set.
        texts: list[str | list[str]] = [["one", "two words"], "three", long, "four", long + " more"]
        for key, text in [(TEST_KEY, text) for text in texts] + [("sk-wrong", "one")]:
            httpx.post(
                f"{gw.url}/v1/embeddings",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MINILM, "input": text},
                timeout=60,
            )
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_dashboard_query_reads_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = _expressions(dashboard)
    assert len(expressions) >= 20
    queried = set().union(*(metric_names(e) for e in expressions))
    assert queried - exported == set()
    # The dashboard covers what the issue asks for.
    for needed in (
        "gateway_requests_total",
        "gateway_prompt_tokens_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_queue_wait_seconds_sum",
        "gateway_compute_seconds_sum",
        "gateway_batch_size_sum",
        "gateway_batch_tokens_sum",
        "gateway_queue_requests",
        "gateway_models_loaded",
    ):
        assert needed in queried


def test_the_autoscaler_scales_on_an_exported_metric(exported: set[str]) -> None:
    assert _autoscaling_metrics() == {"gateway_queue_requests"} <= exported
