"""create_app(settings) -> Litestar: wiring only."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware

from app.api.exception_handlers import exception_to_response
from app.api.request_log import RequestLogMiddleware
from app.api.routes import OpenAIController, health, provide_engine, ready
from app.auth.keys import KeyStore, generate_key
from app.auth.middleware import ApiKeyAuthMiddleware
from app.config import Settings, load_settings
from app.engine.engine import EmbeddingEngine

logger = logging.getLogger(__name__)


def _key_store(settings: Settings) -> tuple[KeyStore, str | None]:
    """The configured keys; with none configured, one random key (returned to be shown once)."""
    store = KeyStore.from_settings(settings.auth)
    if len(store) == 0:
        key = generate_key()
        store.add("generated", key)
        return store, key
    return store, None


def create_app(settings: Settings | None = None, engine: EmbeddingEngine | None = None) -> Litestar:
    settings = settings or load_settings()
    engine = engine or EmbeddingEngine(settings)
    middleware: list[object] = [RequestLogMiddleware()]
    generated: str | None = None
    state = State({"engine": engine, "settings": settings, "started_at": int(time.time())})
    if settings.auth.enabled:
        state.key_store, generated = _key_store(settings)
        middleware.append(DefineMiddleware(ApiKeyAuthMiddleware))

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
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    return Litestar(
        route_handlers=[OpenAIController, health, ready],
        dependencies={"engine": Provide(provide_engine, sync_to_thread=False)},
        middleware=middleware,  # type: ignore[arg-type]
        exception_handlers={Exception: exception_to_response},
        lifespan=[lifespan],
        state=state,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=None,
        logging_config=None,  # the CLI configures logging; tests keep pytest's capture
        debug=False,
    )
