"""Fault injection for the killed-writer tests (not part of the format): with
SUPSUP_FAULT_STEP=<name>, a writer SIGKILLs itself at that point of a write."""

from __future__ import annotations

import os
import signal
from typing import Final

FAULT_ENV: Final = "SUPSUP_FAULT_STEP"
# The points of every write, in order (formats/writing.md lists what each leaves behind).
FAULT_STEPS: Final = (
    "create-marked",
    "create-arrays",
    "locked",
    "mask-row",
    "record-row",
    "before-commit",
    "committed",
)
COPY_FAULT_STEP: Final = "copy-arrays"  # a copy's arrays are written, its header is not


def fault_point(step: str) -> None:
    """SIGKILL this process at the named step when SUPSUP_FAULT_STEP names it."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
