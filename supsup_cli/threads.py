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
