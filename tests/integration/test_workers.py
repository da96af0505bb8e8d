"""Model workers as processes, through a real server and real clients: two workers share
one model's queue, and a worker killed under load fails only the requests it held, is
restarted, and /ready says so meanwhile."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from signal import SIGKILL

import httpx
import msgspec
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI

from app.engine.workers.host import usable_cores
from tests.conftest import MINILM, TEST_KEY, settings_with
from tests.fake_backend import FakeLoader
from tests.integration.test_batch_api import read_lines, request_line, upload, wait_done
from tests.serving import Gateway, run_gateway

TEXTS = [f"sentence {i} about the river, the market and the {i % 7}th train" for i in range(24)]


def _two_workers(tmp: Path) -> Iterator[tuple[Gateway, FakeLoader]]:
    loader = FakeLoader(str(tmp))
    entry = msgspec.structs.replace(settings_with().models[0], devices=2, device="cpu")
    with run_gateway(settings_with(models=[entry]), key=TEST_KEY, loader=loader) as gateway:
        yield gateway, loader


@pytest.fixture()
def two_workers(tmp_path: Path) -> Iterator[tuple[Gateway, FakeLoader]]:
    yield from _two_workers(tmp_path)


def _embed_all(gateway: Gateway, texts: list[str], concurrency: int) -> list[list[float]]:
    async def run() -> list[list[float]]:
        client = AsyncOpenAI(base_url=gateway.v1, api_key=TEST_KEY, max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(text: str) -> list[float]:
            async with gate:
                response = await client.embeddings.create(model=MINILM, input=text, encoding_format="float")
                return response.data[0].embedding

        try:
            return list(await asyncio.gather(*(one(t) for t in texts)))
        finally:
            await client.close()

    return asyncio.run(run())


def test_two_cpu_workers_both_serve_and_equal_one(
    two_workers: tuple[Gateway, FakeLoader], minilm_gateway: Gateway
) -> None:
    gateway, loader = two_workers
    controls = loader.controls(MINILM)
    # The background worker loads at the lowest CPU priority, after /ready if need be.
    assert _wait_for(lambda: all(w["serving"] for w in gateway.engine.workers(MINILM)), 120)
    workers = gateway.engine.workers(MINILM)
    # Two workers, and the background worker for Batch API jobs (a process of its own too).
    assert [(w["lane"], w["device"]) for w in workers] == [
        ("interactive", "cpu"),
        ("interactive", "cpu"),
        ("background", "cpu"),
    ]
    assert len({w["pid"] for w in workers} | {os.getpid()}) == 4
    controls.forget_batches()
    # The gate holds the first worker on the first request, so the second takes the next.
    controls.close_gate()
    first = threading.Thread(target=_embed_all, args=(gateway, TEXTS[:1], 1))
    first.start()
    assert controls.wait_entered()
    held = _embed_all_in_thread(gateway, TEXTS[1:2])
    time.sleep(1.0)
    controls.open_gate()
    first.join(30)
    held.join(30)
    assert len({b["pid"] for b in controls.batches()}) == 2
    # Under concurrent load both serve, and every vector equals the one-worker gateway's.
    two = _embed_all(gateway, TEXTS, concurrency=8)
    one = _embed_all(minilm_gateway, TEXTS, concurrency=1)
    np.testing.assert_allclose(np.array(two), np.array(one), atol=2e-6)
    assert all(w["batches"] for w in _interactive(gateway))


@pytest.mark.skipif(usable_cores() < 2, reason="a second CPU worker needs two usable cores")
def test_the_default_config_adds_a_second_cpu_worker_and_it_answers_the_same(minilm_gateway: Gateway) -> None:
    # `devices = "auto"`, the default config's: the real MiniLM, one worker, then a second
    # once the first is up (this host has two cores and the memory), one torch thread each.
    with run_gateway(settings_with(auto_workers=True), key=TEST_KEY) as gateway:
        assert _wait_for(lambda: len(_interactive(gateway)) == 2, 120)
        assert _wait_for(lambda: all(w["serving"] for w in gateway.engine.workers(MINILM)), 120)
        ready = httpx.get(f"{gateway.url}/ready").json()
        assert ready["models"] == {MINILM: "ready"}
        assert [w["lane"] for w in ready["workers"][MINILM]] == ["interactive", "interactive", "background"]
        two = _embed_all(gateway, TEXTS * 2, concurrency=8)
        assert all(w["batches"] for w in _interactive(gateway))
    one = _embed_all(minilm_gateway, TEXTS, concurrency=1)
    np.testing.assert_allclose(np.array(two), np.array(one * 2), atol=2e-6)


def _interactive(gateway: Gateway) -> list[dict[str, object]]:
    return [w for w in gateway.engine.workers(MINILM) if w["lane"] == "interactive"]


def _embed_all_in_thread(gateway: Gateway, texts: list[str]) -> threading.Thread:
    thread = threading.Thread(target=_embed_all, args=(gateway, texts, 1))
    thread.start()
    return thread


class _Load:
    """Client threads sending unique single-input requests until stopped; every answer kept."""

    def __init__(self, gateway: Gateway, clients: int) -> None:
        self._gateway = gateway
        self._stop = threading.Event()
        self.answers: list[tuple[int, str, float, dict[str, object]]] = []  # status, request id, time, body
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self._gateway.v1, headers=self._gateway.headers(), timeout=60) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {"model": MINILM, "input": f"client {index} request {n} about the weather"}
                response = client.post("/embeddings", json=body)
                self.answers.append(
                    (
                        response.status_code,
                        response.headers["x-request-id"],
                        time.monotonic(),
                        response.json(),
                    )
                )

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_killed_worker_fails_only_its_batch_and_is_restarted(
    two_workers: tuple[Gateway, FakeLoader], caplog: pytest.LogCaptureFixture
) -> None:
    gateway, loader = two_workers
    controls = loader.controls(MINILM)
    victim = gateway.engine.workers(MINILM)[0]["pid"]
    assert isinstance(victim, int)
    readiness: list[tuple[int, str]] = []
    with _Load(gateway, clients=6) as load:
        time.sleep(1.0)
        # Hold both workers on a batch each, so that the one killed surely holds requests.
        controls.close_gate()
        assert _wait_for(lambda: all(w["in_flight"] for w in _interactive(gateway)), 20)
        killed_at = time.monotonic()
        os.kill(victim, SIGKILL)
        # Its requests fail at once, while the other worker still holds its own.
        assert _wait_for(lambda: any(a[0] != 200 and a[2] > killed_at for a in load.answers), 5)
        controls.open_gate()

        def restarted() -> bool:
            ready = httpx.get(f"{gateway.url}/ready")
            readiness.append((ready.status_code, ready.json()["models"][MINILM]))
            worker = gateway.engine.workers(MINILM)[0]
            return bool(worker["serving"]) and worker["pid"] != victim

        assert _wait_for(restarted, 120), readiness[-1]
        time.sleep(1.0)  # the restarted worker serves too
    failed = [a for a in load.answers if a[0] != 200]
    served = [a for a in load.answers if a[0] == 200]
    assert failed and served and all(a[0] == 500 for a in failed), {a[0] for a in failed}
    for _, _, at, body in failed:
        assert body["error"]["type"] == "server_error"  # type: ignore[index]
        assert at - killed_at < 5  # failed at once, not after a timeout
    # Exactly the requests of the batches the dead worker held failed, as the log names them.
    logged = set()
    for record in caplog.records:
        found = re.search(r"inputs failed: the model worker 0 .*; requests (\S+)", record.getMessage())
        if found:
            logged |= set(found.group(1).split(","))
    assert {a[1] for a in failed} == logged
    assert any(f"worker 0 (pid {victim}) was killed by SIGKILL" in r.getMessage() for r in caplog.records)
    assert any("restarting worker 0 in" in r.getMessage() for r in caplog.records)
    # While worker 0 was down the model was degraded, still ready on worker 1.
    assert any(code == 200 and state.startswith("degraded: 1 of 2") for code, state in readiness)
    served_after = [a for a in served if a[2] > killed_at]
    assert len(served_after) > 20


def test_ready_is_503_while_no_worker_serves(tmp_path: Path) -> None:
    loader = FakeLoader(str(tmp_path))
    with run_gateway(settings_with(), key=TEST_KEY, loader=loader) as gateway:
        victim = gateway.engine.workers(MINILM)[0]["pid"]
        assert isinstance(victim, int)
        os.kill(victim, SIGKILL)
        assert _wait_for(lambda: httpx.get(f"{gateway.url}/ready").status_code == 503, 10)
        ready = httpx.get(f"{gateway.url}/ready").json()
        assert ready["status"] == "not ready"
        assert re.fullmatch(
            rf"not serving: no worker serving, restarting "
            rf"\(worker 0 \(pid {victim}\) was killed by SIGKILL\)",
            ready["models"][MINILM],
        )
        # A request sent meanwhile waits in the queue and is served by the restarted worker.
        response = httpx.post(
            f"{gateway.v1}/embeddings",
            headers=gateway.headers(),
            json={"model": MINILM, "input": "hi"},
            timeout=120,
        )
        assert response.status_code == 200
        assert httpx.get(f"{gateway.url}/ready").status_code == 200


def test_a_killed_background_worker_fails_only_its_lines_and_is_restarted(tmp_path: Path) -> None:
    """The background worker runs the Batch API job; killed mid-job, the lines of the batch it
    held go to the error file as 500s, it is restarted at idle priority, and the job ends
    with every custom_id once. /ready lists it and says it is restarting meanwhile."""
    loader = FakeLoader(str(tmp_path / "controls"))
    controls = loader.controls(MINILM)
    batch = msgspec.structs.replace(
        settings_with().batch,
        db_path=str(tmp_path / "batches.sqlite3"),
        files_dir=str(tmp_path / "files"),
        chunk_inputs=8,
    )
    lines = [request_line(f"r{i}", {"model": MINILM, "input": f"line {i} of the job"}) for i in range(40)]
    with run_gateway(settings_with(batch=batch), key=TEST_KEY, loader=loader) as gateway:
        assert _wait_for(lambda: all(w["serving"] for w in gateway.engine.workers(MINILM)), 120)
        ready = httpx.get(f"{gateway.url}/ready").json()
        assert [w["lane"] for w in ready["workers"][MINILM]] == ["interactive", "background"]
        interactive, victim = (w["pid"] for w in gateway.engine.workers(MINILM))
        assert isinstance(victim, int)
        sdk = openai.OpenAI(base_url=gateway.v1, api_key=TEST_KEY, max_retries=0)
        controls.close_gate()
        job = sdk.batches.create(
            input_file_id=upload(sdk, lines), endpoint="/v1/embeddings", completion_window="24h"
        )
        assert controls.wait_entered(30)
        assert gateway.engine.workers(MINILM)[1]["in_flight"]
        os.kill(victim, SIGKILL)
        controls.open_gate()

        def restarting() -> bool:
            state = httpx.get(f"{gateway.url}/ready").json()["models"][MINILM]
            return bool(
                re.fullmatch(r"degraded: the background worker \(batch jobs\) is restarting .*", state)
            )

        assert _wait_for(restarting, 10)
        # Interactive requests are served meanwhile, by the model's worker.
        response = httpx.post(
            f"{gateway.v1}/embeddings", headers=gateway.headers(), json={"model": MINILM, "input": "hi"}
        )
        assert response.status_code == 200
        done = wait_done(sdk, job.id)
        assert done.status == "completed"
        out, errors = read_lines(sdk, done.output_file_id), read_lines(sdk, done.error_file_id)
        assert Counter(line["custom_id"] for line in out + errors) == Counter(f"r{i}" for i in range(40))
        assert errors and all(line["response"]["status_code"] == 500 for line in errors)
        assert done.request_counts is not None and done.request_counts.failed == len(errors)
        workers = gateway.engine.workers(MINILM)
        assert workers[0]["pid"] == interactive  # the model's worker was not touched
        restarted = workers[1]["pid"]
        assert isinstance(restarted, int) and restarted != victim and workers[1]["serving"]
        if hasattr(os, "SCHED_IDLE"):
            assert os.sched_getscheduler(restarted) == os.SCHED_IDLE
        assert httpx.get(f"{gateway.url}/ready").json()["models"][MINILM] == "ready"
