"""create_app(settings) -> Litestar: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from prometheus_client import start_http_server

from app.api.batch_routes import BatchesController, BatchService, FilesController
from app.api.drain import Drain, DrainMiddleware
from app.api.exception_handlers import exception_to_response
from app.api.metrics import GatewayMetrics, metrics_endpoint
from app.api.ratelimit import RateLimiter
from app.api.request_log import RequestLogMiddleware
from app.api.routes import OpenAIController, health, provide_engine, provide_limiter, ready
from app.auth.key_file import KeyFileWatcher, read_key_file, signature, stored_keys
from app.auth.keys import KeyIdentity, KeyStore, StoredKey, digest, generate_key, keys_from_settings
from app.auth.middleware import ApiKeyAuthMiddleware
from app.batches.runner import BatchRunner
from app.batches.store import open_store
from app.config import Settings, expand_path, load_settings
from app.engine.engine import BackendLoader, EmbeddingEngine

logger = logging.getLogger(__name__)


def _key_store(settings: Settings) -> tuple[KeyStore, str | None, KeyFileWatcher | None]:
    """The configured keys and the key file's; with none anywhere, one random key (returned
    to be shown once, and kept for the run). The watcher follows the key file's changes."""
    base = keys_from_settings(settings.auth)
    # Settings built in code (not by load_settings) may still hold $XDG_STATE_HOME or ~.
    path = Path(expand_path(settings.auth.key_file, os.environ)) if settings.auth.key_file else None
    seen = signature(path) if path else None
    from_file = stored_keys(read_key_file(path)) if path else []
    generated = None
    if not base and not from_file:
        generated = generate_key()
        base = [StoredKey(digest(generated), KeyIdentity("generated"))]
    watcher = KeyFileWatcher(path, settings.auth.key_file_poll_seconds, base, seen) if path else None
    return KeyStore(base + from_file), generated, watcher


async def _freeze_after_load(engine: EmbeddingEngine) -> None:
    """Once the models are loaded, move every object so far out of the garbage collector's
    reach: torch and transformers leave millions of long-lived objects whose full collections
    stalled the event loop for over 100 ms under load (measured with MiniLM on one core)."""
    await asyncio.to_thread(engine.wait_loaded)
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None,
    engine: EmbeddingEngine | None = None,
    loader: BackendLoader | None = None,
) -> Litestar:
    """The app on `settings`; `engine` (built here unless given, with `loader` and the metrics
    as its observer) is on `app.state.engine`."""
    settings = settings or load_settings()
    metrics: GatewayMetrics | None = None
    if settings.metrics.enabled:
        names = [m.name for m in settings.models] + [a.name for m in settings.models for a in m.aliases]
        metrics = GatewayMetrics(names, lambda: app_engine.status())
    app_engine = engine or EmbeddingEngine(settings, loader, observer=metrics)
    limiter = RateLimiter(settings.limits)
    drain = Drain()
    # The drain's 503s go out through the request log (logged, with the request id).
    middleware: list[object] = [RequestLogMiddleware(metrics), DrainMiddleware(drain)]
    generated: str | None = None
    watcher: KeyFileWatcher | None = None
    state = State(
        {
            "engine": app_engine,
            "settings": settings,
            "started_at": int(time.time()),
            "limiter": limiter,
            "metrics": metrics,
            "drain": drain,
        }
    )
    if settings.auth.enabled:
        state.key_store, generated, watcher = _key_store(settings)
        middleware.append(DefineMiddleware(ApiKeyAuthMiddleware))
    handlers: list[object] = [OpenAIController, health, ready]
    if metrics is not None and settings.metrics.port == 0:
        auth = settings.auth
        state.admin_key_sha256 = auth.admin_key_sha256 or digest(auth.admin_key or "")
        handlers.append(metrics_endpoint)
    batches: BatchService | None = None
    if settings.batch.enabled:
        store = open_store(settings.batch.db_path, settings.batch.files_dir, dict(os.environ))
        runner = BatchRunner(
            store,
            app_engine,
            settings.batch,
            budget=limiter,
            ready=lambda: "loading" not in app_engine.status().values(),
        )
        batches = state.batches = BatchService(store, runner, settings.batch)
        handlers += [FilesController, BatchesController]

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not settings.auth.enabled:
            logger.warning("authentication is disabled: anyone who can reach this port can use it")
        if generated is not None:
            # Shown once, on the terminal only (not through logging), so the quickstart works.
            print(
                f"No API key is configured; this run accepts the generated key: {generated}",
                file=sys.stderr,
                flush=True,
            )
        async with contextlib.AsyncExitStack() as stack:
            await limiter.start()
            stack.push_async_callback(limiter.stop)
            if metrics is not None and settings.metrics.port:
                server, _ = start_http_server(
                    settings.metrics.port, addr=settings.metrics.host, registry=metrics.registry
                )
                stack.callback(server.server_close)
                stack.callback(server.shutdown)
            if watcher is not None:

                def install(store: KeyStore) -> None:
                    app.state.key_store = store

                task = asyncio.create_task(watcher.run(install), name="key-file-watcher")
                stack.callback(task.cancel)
            app_engine.start()
            stack.callback(app_engine.stop)
            stack.push_async_callback(app_engine.close_cache)
            freezer = asyncio.create_task(_freeze_after_load(app_engine), name="gc-freeze")
            stack.callback(freezer.cancel)
            if batches is not None:
                # Jobs left active by the last run resume where their progress was committed.
                batches.runner.start()
                stack.callback(batches.store.close)
                stack.push_async_callback(batches.runner.stop)
            yield

    return Litestar(
        route_handlers=handlers,  # type: ignore[arg-type]
        dependencies={
            "engine": Provide(provide_engine, sync_to_thread=False),
            "limiter": Provide(provide_limiter, sync_to_thread=False),
        },
        middleware=middleware,  # type: ignore[arg-type]
        exception_handlers={Exception: exception_to_response},
        lifespan=[lifespan],
        state=state,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=None,
        logging_config=None,  # the CLI configures logging; tests keep pytest's capture
        debug=False,
    )
