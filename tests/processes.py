"""`python -m app serve` as real subprocesses, their output kept in a file to read afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.serving import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]


class GatewayProcess:
    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
        self._out = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env={**clean, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        wait_ready(
            self.url, timeout, lambda: self.process.poll() is None, lambda: "\n" + self.log.read_text()
        )

    def stop(self) -> str:
        """Stop it and return everything it wrote."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self._out.close()
        return self.log.read_text()


@contextmanager
def gateway_processes(*envs: Mapping[str, str], logs: Path) -> Iterator[list[GatewayProcess]]:
    """Start one gateway per environment, in parallel, and wait until all are ready."""
    with ExitStack() as stack:
        started = []
        for i, env in enumerate(envs):
            gateway = GatewayProcess(env, logs / f"gateway-{i}.log")
            stack.callback(gateway.stop)
            started.append(gateway)
        for gateway in started:
            gateway.wait_ready()
        yield started
