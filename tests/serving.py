"""A real gateway on loopback for tests: uvicorn in a thread, the app's real lifespan."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from app.config import Settings
from app.engine.engine import EmbeddingEngine
from app.framing import uvicorn_options
from app.models.protocol import BackendLoader
from app.server import create_app


@dataclass(frozen=True)
class Gateway:
    url: str  # e.g. http://127.0.0.1:PORT
    key: str | None
    engine: EmbeddingEngine

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def wait_ready(url: str, timeout: float, alive: Callable[[], bool], why: Callable[[], str]) -> None:
    """Poll `url`/ready until it answers 200; raise with `why()` if the server stops or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not alive():
            raise RuntimeError(f"gateway did not become ready: {why()}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def run_gateway(
    settings: Settings,
    key: str | None = None,
    loader: BackendLoader | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[Gateway]:
    # The app builds its own engine, so the engine reports to the app's metrics as in `serve`.
    app = create_app(settings, loader=loader)
    engine: EmbeddingEngine = app.state.engine
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        **uvicorn_options(settings.server),  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ready_timeout, thread.is_alive, lambda: str(engine.status()))
        yield Gateway(url=url, key=key, engine=engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
