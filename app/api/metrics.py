"""Prometheus metrics: one registry per app, fed by the request log and the engine's observer.

    gateway_requests_total{model,key,status}      /v1 requests by served name, key name, HTTP status
    gateway_prompt_tokens_total{model,key}        `usage.prompt_tokens` of served requests
    gateway_request_duration_seconds{model}       /v1 request latency, histogram
    gateway_queue_wait_seconds{model}             a request's wait for its first forward pass
    gateway_compute_seconds{model}                a request's time in forward passes
    gateway_batch_size{model}                     rows per forward pass
    gateway_batch_tokens{model}                   padded tokens (longest x rows) per forward pass
    gateway_batch_duration_seconds{model}         time per forward pass
    gateway_queue_requests{model}, gateway_queue_tokens{model}   what is queued now
    gateway_forward_fixed_seconds{model}          a forward's fixed cost, fitted to recent ones
    gateway_request_return_seconds{model}         how soon a request comes back after its batch
                                                  is answered (both: app.engine.pipelining)
    gateway_models_loaded{model}                  1 once the model is loaded and ready, else 0

`model` is a served name; any other name a client sends is counted as "unknown", so clients
cannot grow the label set. Served on its own port (prometheus_client's server) or, with
`metrics.port = 0`, at /metrics on the API port for the admin key only.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Iterator

from litestar import Request, Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from app.auth.keys import digest
from app.auth.middleware import MISSING_KEY, bearer_key
from app.errors import AuthenticationError

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ROWS = tuple(float(2**i) for i in range(11))  # 1 .. 1024
_TOKENS = tuple(float(2**i) for i in range(4, 19))  # 16 .. 262144
UNKNOWN = "unknown"


class _ModelsLoaded(Collector):
    def __init__(self, status: Callable[[], dict[str, str]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_models_loaded", "1 while at least one worker serves the model, else 0", labels=["model"]
        )
        for model, state in self._status().items():
            family.add_metric([model], 1.0 if state.startswith(("ready", "degraded")) else 0.0)
        yield family


class GatewayMetrics:
    """The gateway's metrics; also the engine's `EngineObserver`."""

    def __init__(self, served: Iterable[str], model_status: Callable[[], dict[str, str]]) -> None:
        self.registry = CollectorRegistry()
        self._served = frozenset(served)
        r = self.registry
        self.requests = Counter("gateway_requests", "/v1 requests", ["model", "key", "status"], registry=r)
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens", "Prompt tokens of served requests", ["model", "key"], registry=r
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds", "/v1 request latency", ["model"], buckets=_SECONDS, registry=r
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Wait before the first forward pass",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.compute = Histogram(
            "gateway_compute_seconds", "Time in forward passes", ["model"], buckets=_SECONDS, registry=r
        )
        self.batch_size = Histogram(
            "gateway_batch_size", "Rows per forward pass", ["model"], buckets=_ROWS, registry=r
        )
        self.batch_tokens = Histogram(
            "gateway_batch_tokens", "Padded tokens per forward pass", ["model"], buckets=_TOKENS, registry=r
        )
        self.batch_duration = Histogram(
            "gateway_batch_duration_seconds", "Time per forward pass", ["model"], buckets=_SECONDS, registry=r
        )
        self.cache_hits = Counter(
            "gateway_cache_hits", "Inputs served from the embedding cache", ["model"], registry=r
        )
        self.cache_misses = Counter(
            "gateway_cache_misses", "Inputs the embedding cache did not have", ["model"], registry=r
        )
        self.queue_requests = Gauge("gateway_queue_requests", "Requests queued", ["model"], registry=r)
        self.queue_tokens = Gauge("gateway_queue_tokens", "Tokens queued", ["model"], registry=r)
        self.forward_fixed = Gauge(
            "gateway_forward_fixed_seconds", "A forward pass's fitted fixed cost", ["model"], registry=r
        )
        self.request_return = Gauge(
            "gateway_request_return_seconds",
            "Time per request for as many new requests as a batch served to arrive after its answer",
            ["model"],
            registry=r,
        )
        r.register(_ModelsLoaded(model_status))

    def model_label(self, model: str) -> str:
        if model == "-":
            return ""
        return model if model in self._served else UNKNOWN

    def on_request(
        self,
        *,
        model: str,
        key: str,
        status: int,
        seconds: float,
        tokens: int,
        queue_seconds: float,
        compute_seconds: float,
    ) -> None:
        """One finished /v1 request (from the request log middleware)."""
        label = self.model_label(model)
        key = "" if key == "-" else key
        self.requests.labels(label, key, str(status)).inc()
        self.request_duration.labels(label).observe(seconds)
        if status == 200 and label not in ("", UNKNOWN):
            self.prompt_tokens.labels(label, key).inc(tokens)
            self.queue_wait.labels(label).observe(queue_seconds)
            self.compute.labels(label).observe(compute_seconds)

    # -- EngineObserver -----------------------------------------------------------------------

    def on_batch(self, model: str, size: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_tokens.labels(model).observe(padded_tokens)
        self.batch_duration.labels(model).observe(seconds)

    def on_cache(self, model: str, hits: int, misses: int) -> None:
        if hits:
            self.cache_hits.labels(model).inc(hits)
        if misses:
            self.cache_misses.labels(model).inc(misses)

    def on_queue_depth(self, model: str, requests: int, tokens: int) -> None:
        self.queue_requests.labels(model).set(requests)
        self.queue_tokens.labels(model).set(tokens)

    def on_batching_costs(
        self, model: str, fixed_seconds: float | None, return_seconds: float | None
    ) -> None:
        if fixed_seconds is not None:
            self.forward_fixed.labels(model).set(fixed_seconds)
        if return_seconds is not None:
            self.request_return.labels(model).set(return_seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@get("/metrics", exclude_from_auth=True, sync_to_thread=False)
def metrics_endpoint(request: Request[object, object, State], state: State) -> Response[bytes]:
    """Prometheus text format, for the admin key only (metrics.port = 0)."""
    presented = bearer_key(request)
    if presented is None:
        raise AuthenticationError(MISSING_KEY)
    admin: str = state.admin_key_sha256
    if not hmac.compare_digest(digest(presented), admin):
        raise AuthenticationError("Incorrect admin key provided.", code="invalid_api_key")
    metrics: GatewayMetrics = state.metrics
    return Response(content=metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
