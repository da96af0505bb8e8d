"""`devices = "auto"`: one worker, and on a CPU host with the cores and memory a second one
that splits the cores with the first and is kept for queries while bulk work is paced."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config import BatchSettings, EngineSettings, ModelSettings, load_settings
from app.engine.engine import EmbeddingEngine
from app.engine.workers import host
from app.engine.workers.host import plan_second_worker
from tests.fake_backend import start_engine, wait_for_workers

MODEL = "fake"
GIB = 1 << 30


def test_the_second_worker_splits_the_cores_where_memory_allows() -> None:
    assert plan_second_worker(2, GIB // 2, 20 * GIB, 0).threads == 1
    assert plan_second_worker(16, GIB // 2, 20 * GIB, 0).threads == 8
    assert plan_second_worker(3, GIB // 2, 20 * GIB, 0).threads == 1
    # engine.torch_threads, where set, is what each worker gets.
    assert plan_second_worker(16, GIB // 2, 20 * GIB, 4).threads == 4
    # A copy must fit four times into the memory free.
    assert plan_second_worker(2, 5 * GIB, 20 * GIB, 0).threads == 1
    refused = plan_second_worker(2, 5 * GIB + 1, 20 * GIB, 0)
    assert refused.threads == 0 and "no room" in refused.reason
    assert plan_second_worker(1, GIB // 2, 20 * GIB, 0).threads == 0
    assert plan_second_worker(2, None, 20 * GIB, 0).threads == 0
    assert plan_second_worker(2, GIB // 2, None, 0).threads == 0


def test_the_host_facts_are_read() -> None:
    assert host.usable_cores() >= 1
    free = host.available_memory()
    assert free is not None and free > 0
    rss = host.resident_bytes(os.getpid())
    assert rss is not None and rss > 1 << 20
    assert host.resident_bytes(2**22 + 12345) is None  # no such process


def test_devices_auto_is_read_from_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[models]]\nname = "m"\nbase_model = "x"\ndevices = "auto"\n')
    assert load_settings(path).models[0].devices == "auto"
    path.write_text('[[models]]\nname = "m"\nbase_model = "x"\ndevices = "all"\n')
    with pytest.raises(Exception, match="devices"):
        load_settings(path)


def _interactive(engine: EmbeddingEngine) -> list[dict[str, object]]:
    return [w for w in engine.workers(MODEL) if w["lane"] == "interactive"]


def _bulk(engine: EmbeddingEngine, tag: str) -> None:
    async def run() -> None:
        await asyncio.gather(
            *(engine.embed(MODEL, [f"{tag} {k} {i} w x y z" for i in range(64)]) for k in range(6))
        )

    asyncio.run(run())


@pytest.mark.skipif(host.usable_cores() < 2, reason="a second CPU worker needs two cores")
def test_on_a_cpu_host_a_second_worker_joins_and_the_two_split_the_cores(tmp_path: Path) -> None:
    cores = host.usable_cores()
    engine, controls = start_engine(
        tmp_path,
        # Forwards never paced: no core is left to the gateway (Batcher.spare_cores), so the
        # threads each forward ran on are the worker's share alone.
        EngineSettings(workers="process", max_batch_wait_ms=0, max_batch_size=16, max_batch_ms=0),
        ModelSettings(name=MODEL, base_model="fake", max_length=32, device="auto", devices="auto"),
        batch=BatchSettings(enabled=False),
        forward_seconds=(0.003, 0.0),
    )
    try:
        first, second = wait_for_workers(engine, MODEL, 2)
        assert first["device"] == second["device"] == "cpu"
        assert engine.status()[MODEL] == "ready"
        controls.forget_batches()
        _bulk(engine, "both")
        batches = controls.batches()
    finally:
        engine.stop()
    by_pid: dict[object, set[object]] = {}
    for batch in batches:
        by_pid.setdefault(batch["pid"], set()).add(batch["threads"])
    # Pure bulk runs on both, each on its half of the cores (the first, started on all of
    # them, leaves the second its share).
    assert set(by_pid) == {first["pid"], second["pid"]}
    assert by_pid[first["pid"]] == by_pid[second["pid"]] == {cores // 2}


def test_with_no_room_for_a_copy_one_worker_keeps_every_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(host, "available_memory", lambda: 1 << 20)
    caplog.set_level(logging.INFO, "app.engine.workers.pool")
    engine, controls = start_engine(
        tmp_path,
        EngineSettings(workers="process", max_batch_wait_ms=0, max_batch_ms=0),
        ModelSettings(name=MODEL, base_model="fake", max_length=32, device="cpu", devices="auto"),
        batch=BatchSettings(enabled=False),
    )
    try:
        time.sleep(1)
        assert len(_interactive(engine)) == 1
        _bulk(engine, "one")
        threads = {b["threads"] for b in controls.batches()}
    finally:
        engine.stop()
    assert "one CPU worker" in caplog.text and "no room" in caplog.text
    # Every forward on all of torch's threads (its default in a fresh process): none lent.
    default = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert threads == {min(int(default.stdout), host.usable_cores())}


def test_devices_auto_on_thread_workers_is_one_worker(tmp_path: Path) -> None:
    engine, _ = start_engine(
        tmp_path,
        EngineSettings(workers="thread"),
        ModelSettings(name=MODEL, base_model="fake", max_length=32, device="cpu", devices="auto"),
    )
    try:
        time.sleep(0.5)
        assert len(_interactive(engine)) == 1
    finally:
        engine.stop()


def test_the_default_config_asks_for_auto_workers() -> None:
    settings = load_settings(Path(__file__).parents[2] / "config" / "default.toml")
    assert [m.devices for m in settings.models] == ["auto"]
    # A model entry that leaves it out gets one worker.
    assert ModelSettings(name="m", base_model="x").devices == 1
