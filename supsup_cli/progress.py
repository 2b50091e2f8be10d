"""The one shape of a progress report: long work in the library calls it, the CLI draws it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """`done` of `total` steps so far, and a short status (a loss, a batch count) to show."""

    def __call__(self, done: int, total: int, status: str = "") -> None: ...
