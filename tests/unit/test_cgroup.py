"""A container's CPU quota and memory limit read from cgroup files (v1 and v2), on fake trees
laid out as the kernel mounts them; then what the host facts make of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.engine.workers import cgroup, host

MIB = 1 << 20


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _v2(tmp_path: Path, group: str = "/kubepods/pod1/c1") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory pids")
    (root / group.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    _write(proc, f"0::{group}")
    return root, proc


def _v1(tmp_path: Path, group: str = "/docker/abc") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for controller in ("cpu", "memory"):
        (root / controller / group.lstrip("/")).mkdir(parents=True)
    proc = tmp_path / "proc_cgroup"
    _write(proc, f"5:memory:{group}\n4:cpu,cpuacct:{group}\n1:name=systemd:{group}\n0::/")
    return root, proc


def test_v2_quota_and_memory_limit(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path)
    group = root / "kubepods/pod1/c1"
    assert cgroup.cpu_limit(root, proc) is None and cgroup.memory_room(root, proc) is None
    _write(group / "cpu.max", "150000 100000")  # 1.5 CPUs: two threads may run
    _write(group / "memory.max", str(4096 * MIB))
    _write(group / "memory.current", str(1024 * MIB))
    assert cgroup.cpu_limit(root, proc) == 2
    assert cgroup.memory_room(root, proc) == 3072 * MIB
    _write(group / "cpu.max", "max 100000")
    _write(group / "memory.max", "max")
    assert cgroup.cpu_limit(root, proc) is None and cgroup.memory_room(root, proc) is None


def test_a_limit_on_an_ancestor_group_binds(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path)
    _write(root / "kubepods/pod1/cpu.max", "100000 100000")  # the pod: 1 CPU
    _write(root / "kubepods/pod1/c1/cpu.max", "400000 100000")  # the container: 4
    _write(root / "kubepods/pod1/memory.max", str(2048 * MIB))
    _write(root / "kubepods/pod1/memory.current", str(1536 * MIB))
    assert cgroup.cpu_limit(root, proc) == 1
    assert cgroup.memory_room(root, proc) == 512 * MIB


def test_v1_quota_and_memory_limit(tmp_path: Path) -> None:
    root, proc = _v1(tmp_path)
    cpu, memory = root / "cpu/docker/abc", root / "memory/docker/abc"
    _write(cpu / "cpu.cfs_quota_us", "-1")
    _write(cpu / "cpu.cfs_period_us", "100000")
    _write(memory / "memory.limit_in_bytes", "9223372036854771712")  # v1's "no limit"
    _write(memory / "memory.usage_in_bytes", str(100 * MIB))
    assert cgroup.cpu_limit(root, proc) is None and cgroup.memory_room(root, proc) is None
    _write(cpu / "cpu.cfs_quota_us", "300000")
    _write(memory / "memory.limit_in_bytes", str(1024 * MIB))
    assert cgroup.cpu_limit(root, proc) == 3
    assert cgroup.memory_room(root, proc) == 924 * MIB


def test_in_a_cgroup_namespace_the_group_is_the_mount(tmp_path: Path) -> None:
    # Inside the container /proc shows "/" (or a path not under the mount): the mount's own
    # files are the container's.
    root, proc = _v2(tmp_path, group="/")
    _write(root / "cpu.max", "200000 100000")
    assert cgroup.cpu_limit(root, proc) == 2
    _write(proc, "0::/not/mounted/here")
    assert cgroup.cpu_limit(root, proc) == 2


def test_unreadable_or_odd_files_count_as_no_limit(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path)
    _write(root / "kubepods/pod1/c1/cpu.max", "lots 100000")
    _write(root / "kubepods/pod1/c1/memory.max", str(MIB))  # no memory.current beside it
    assert cgroup.cpu_limit(root, proc) is None and cgroup.memory_room(root, proc) is None
    assert cgroup.cpu_limit(root, tmp_path / "missing") is None


def test_the_host_facts_stay_within_the_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, proc = _v2(tmp_path)
    group = root / "kubepods/pod1/c1"
    _write(group / "cpu.max", "100000 100000")
    _write(group / "memory.max", str(300 * MIB))
    _write(group / "memory.current", str(100 * MIB))
    monkeypatch.setattr(cgroup, "ROOT", root)
    monkeypatch.setattr(cgroup, "PROC_CGROUP", proc)
    assert host.usable_cores() == 1
    assert host.available_memory() == 200 * MIB
    # So a 100 MiB worker gets no second copy here, and one core gets no second worker.
    plan = host.plan_second_worker(host.usable_cores(), 100 * MIB, host.available_memory(), 0)
    assert plan.threads == 0


@pytest.mark.parametrize(("cores", "capped"), [(1, True), (4096, False)])
def test_torchs_default_thread_count_is_capped_at_the_quota(cores: int, capped: bool) -> None:
    # In a fresh process: torch's thread count is per process, and tests share this one.
    probe = (
        "import torch; default = torch.get_num_threads(); "
        "from app.models.torch_runtime import configure_threads; "
        f"configure_threads(0, {cores}); print(default, torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    default, now = map(int, out.stdout.split())
    assert now == (1 if capped else default)
