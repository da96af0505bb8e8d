"""The lowest CPU priority for a background worker process.

A forward pass cannot be preempted from inside: an interactive request that arrives while a
batch job's forward runs on the same cores would wait for it. A separate process at the
lowest priority can be preempted by the OS instead: SCHED_IDLE (Linux) runs it only on CPU
time nothing else wants, and a normal task that wakes up takes the core from it at once.
Where SCHED_IDLE is missing, nice 19 is the next best thing.
"""

from __future__ import annotations

import contextlib
import os

# /proc/self/task lists every thread of this process (Linux).
_TASKS = "/proc/self/task"


def lowest_cpu_priority() -> str:
    """Put every thread of this process (and those it starts later) at the lowest CPU
    priority; returns what was applied ("SCHED_IDLE", "nice 19" or "unchanged")."""
    applied = "unchanged"
    for tid in _threads():
        if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                applied = "SCHED_IDLE"
                continue
            except OSError:
                pass
        with contextlib.suppress(OSError, AttributeError):
            # On Linux a thread's nice value is its own: set each thread's.
            os.setpriority(os.PRIO_PROCESS, tid, 19)
            applied = "nice 19"
    if applied == "unchanged":
        with contextlib.suppress(OSError, AttributeError):
            os.nice(19 - os.nice(0))
            applied = "nice 19"
    return applied


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(_TASKS)]
    except OSError:
        return [0]  # 0: the calling thread (or the process, where threads are not separate)
