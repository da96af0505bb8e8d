"""`python -m app serve` as real subprocesses, their output kept in a file to read afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.serving import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
# Tests stop their gateways with SIGTERM: no drain period unless a test asks for one.
_FAST_STOP = {"GATEWAY__SERVER__DRAIN_SECONDS": "0"}


class GatewayProcess:
    def __init__(self, env: Mapping[str, str], log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
        self._out = log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env={**clean, **_FAST_STOP, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 120) -> None:
        wait_ready(
            self.url, timeout, lambda: self.process.poll() is None, lambda: "\n" + self.log.read_text()
        )

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The exit status (negative: killed by that signal); raises if it runs past `timeout`."""
        return self.process.wait(timeout)

    def stop(self) -> str:
        """Stop it (SIGKILL if SIGTERM is not enough) and return everything it wrote."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
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
