"""A real HAProxy on loopback, run from deploy/haproxy/haproxy.cfg with the test's servers."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from tests.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOYED_CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
BACKEND = "gateways"


def render_config(servers: dict[str, int]) -> str:
    """The deployed file with its `server` lines replaced by `servers` (name -> loopback port)."""
    text = DEPLOYED_CONFIG.read_text()
    lines = [f"    server {name} 127.0.0.1:{port}" for name, port in servers.items()]
    kept = [line for line in text.splitlines() if not re.match(r"\s*server\s", line)]
    assert len(kept) < len(text.splitlines()), "the deployed config lists no servers"
    return "\n".join(kept + lines) + "\n"


class HAProxy:
    def __init__(self, servers: dict[str, int], workdir: Path, check_inter: str = "200ms") -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("haproxy is not installed: run `make services`")
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(render_config(servers))
        self.log = workdir / "haproxy.log"
        self._out = self.log.open("w")
        env = {
            **os.environ,
            "LB_BIND": f"127.0.0.1:{self.port}",
            "LB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            "LB_CHECK_INTER": check_inter,
        }
        self.process = subprocess.Popen(
            [binary, "-f", str(self.config), "-db"], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def server_status(self) -> dict[str, str]:
        """Each server's state as the stats page shows it: UP, DOWN, "UP 1/2" (going down)..."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_status(self, name: str, status: str, timeout: float) -> float:
        """Seconds until server `name` shows `status`; raises after `timeout`."""
        start = time.monotonic()
        while True:
            try:
                if self.server_status().get(name) == status:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if time.monotonic() - start > timeout or self.process.poll() is not None:
                raise RuntimeError(f"{name} not {status} after {timeout} s: {self._last_lines()}")
            time.sleep(0.05)

    def _last_lines(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-20:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._out.close()
