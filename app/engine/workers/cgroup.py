"""A container's CPU quota and memory limit, which /proc and the CPU affinity do not show.

A Kubernetes pod limited to 2 CPUs on a 64-core node sees 64 cores in its affinity and the
node's memory in /proc/meminfo; only its cgroup says 2 CPUs and, say, 4 GiB. Both cgroup
versions are read: v2 (`cpu.max`, `memory.max` and `memory.current` in the unified tree)
and v1 (`cpu.cfs_quota_us` and `cpu.cfs_period_us` in the cpu hierarchy,
`memory.limit_in_bytes` and `memory.usage_in_bytes` in the memory one). A limit set on an
ancestor group binds too, so the process's group and every group above it are read, and the
tightest wins. Anything unreadable counts as no limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" on memory as a page-rounded 2**63 - 1.
_V1_UNLIMITED = 1 << 62


def _groups(controller: str, root: Path, proc_cgroup: Path) -> Iterator[tuple[int, Path]]:
    """(version, directory) of this process's group for `controller` and of each group above
    it, where the hierarchy is mounted under `root`."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and (root / "cgroup.controllers").exists():
            version, mount = 2, root  # the unified hierarchy, mounted at the root
        elif controller in controllers.split(","):
            version, mount = 1, root / controller
        else:
            continue
        # In a cgroup namespace the group is the mount's root, which /proc shows as "/".
        group = mount / path.lstrip("/")
        if not group.is_dir():
            group = mount
        while True:
            yield version, group
            if group == mount:
                break
            group = group.parent


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_limit(root: Path | None = None, proc_cgroup: Path | None = None) -> int | None:
    """The CPUs the quota allows, rounded up (None: no quota)."""
    limits = []
    for version, group in _groups("cpu", root or ROOT, proc_cgroup or PROC_CGROUP):
        if version == 2:
            quota, _, period = (_read(group / "cpu.max") or "max").partition(" ")
        else:
            quota = _read(group / "cpu.cfs_quota_us") or "-1"
            period = _read(group / "cpu.cfs_period_us") or ""
        try:
            if quota not in ("max", "-1") and int(period) > 0:
                limits.append(max(1, math.ceil(int(quota) / int(period))))
        except ValueError:
            continue
    return min(limits, default=None)


def memory_room(root: Path | None = None, proc_cgroup: Path | None = None) -> int | None:
    """Bytes the memory limit still leaves this group (None: no limit)."""
    rooms = []
    for version, group in _groups("memory", root or ROOT, proc_cgroup or PROC_CGROUP):
        if version == 2:
            limit, used = _read(group / "memory.max"), _read(group / "memory.current")
        else:
            limit, used = _read(group / "memory.limit_in_bytes"), _read(group / "memory.usage_in_bytes")
        try:
            if limit is not None and limit != "max" and int(limit) < _V1_UNLIMITED and used is not None:
                rooms.append(max(0, int(limit) - int(used)))
        except ValueError:
            continue
    return min(rooms, default=None)
