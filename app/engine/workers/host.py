"""What the model workers ask of the host: whether a CPU model gets a second worker
(`devices = "auto"`), and whether a worker's forwards leave the gateway's CPU alone.

On a CPU, one worker on every core runs a lone query fastest, but a query that arrives
while it runs a document's forward waits for it to end (on 2 cores, 50 to 65 ms for one
256-token MiniLM row; bench/README.md, huge inputs). Two workers splitting the cores, the
second kept for queries while bulk work is paced (ProcessWorker.keep_for_queries), halve
the worst wait and run bulk work as fast. The price is a second copy of the model, so it
is taken only where the first worker's memory fits four times into what is free.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from app.engine.workers import cgroup

# The second copy may take at most this share of the memory free once the first is up.
MEMORY_SHARE = 0.25


class SecondWorker(NamedTuple):
    """The second CPU worker's plan, or why there is none (`threads` 0)."""

    threads: int
    reason: str


def usable_cores() -> int:
    """The cores this process may use: its affinity (a container's cpuset), within its
    cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup.cpu_limit()
    return min(cores, quota) if quota is not None else cores


def available_memory() -> int | None:
    """Bytes that can be taken now without swapping or the OOM killer: MemAvailable, within
    what the cgroup's memory limit still leaves, if known."""
    free = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    room = cgroup.memory_room()
    if room is None:
        return free
    return room if free is None else min(free, room)


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory, if it can be read."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def plan_second_worker(
    cores: int, worker_bytes: int | None, free_bytes: int | None, threads: int
) -> SecondWorker:
    """`threads`: engine.torch_threads (0 = split the cores between the two workers)."""
    if cores < 2:
        return SecondWorker(0, f"{cores} core")
    if worker_bytes is None or free_bytes is None:
        return SecondWorker(0, "the memory free is not known")
    if worker_bytes > MEMORY_SHARE * free_bytes:
        taken, free = worker_bytes >> 20, free_bytes >> 20
        return SecondWorker(0, f"a worker takes {taken} MiB, {free} MiB free: no room for a second copy")
    return SecondWorker(threads or cores // 2, "")


def forwards_apart(device: str, pid: int | None) -> bool:
    """Whether a worker's forwards leave the gateway's CPU to it: they run on an accelerator,
    or on CPU cores the gateway may not run on (the worker pinned apart)."""
    if device != "cpu":
        return True
    if pid is None:
        return False
    try:
        return not os.sched_getaffinity(pid) & os.sched_getaffinity(os.getpid())
    except (AttributeError, OSError):
        return False
