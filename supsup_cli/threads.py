"""How many threads CPU work may use, decided without importing torch."""

from __future__ import annotations

import os
import sys


def cpu_threads() -> int:
    """torch's own setting when torch is loaded (a caller may have set it), else
    OMP_NUM_THREADS, else the CPUs this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)))


def training_threads(default: int) -> int | None:
    """Threads for training when OMP_NUM_THREADS is not set (None: it is, torch already obeys
    it): torch's `default`, capped by the CPUs this process may run on and by those the 1-minute
    load average leaves idle. A thread waiting for a busy core stalls every step: on a loaded
    two-core machine a task took 70-82 s with torch's two threads against 14-19 s with one."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None
    allowed = len(os.sched_getaffinity(0))
    idle = allowed - int(os.getloadavg()[0] + 0.5)
    return max(1, min(default, allowed, idle))
