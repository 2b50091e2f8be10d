"""`MaskStore`: a store opened for reading (reader.py) that also changes itself, each change one
transaction of writer.py, and verifies and copies itself (verify.py, copy.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..format import codecs
from ..format.architectures import NetConfig
from ..format.header import LEAN_VERSION, HopfieldState, StoreHeader, TaskRecord
from ..progress import Progress
from . import location, verify, writer
from .reader import StoreReader


class MaskStore(StoreReader):
    """An opened store: what it holds (reader.py), and the changes a writer makes to it."""

    @classmethod
    def create(
        cls,
        path: str | Path,
        net: NetConfig,
        rule: str,
        density: float | None,
        *,
        er_scale: float | None = None,
        keep_scores: bool = False,
        version: int = LEAN_VERSION,
    ) -> MaskStore:
        """Create an empty store (summing its tasks' scores for `--transfer` if `keep_scores`;
        version 1: the older layout); refuses to overwrite an existing one."""
        path = location.normalise(path)
        writer.create(
            path, net, rule, density, er_scale=er_scale, keep_scores=keep_scores, version=version
        )
        return cls.open(path, writable=True)

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        net: NetConfig,
        rule: str,
        density: float | None,
        *,
        er_scale: float | None = None,
        keep_scores: bool = False,
    ) -> tuple[MaskStore, bool]:
        """The store at `path`, created if absent, and whether this call created it.

        Writers started together on a new path agree: one creates the store (under the lock),
        the others open it, and each checks that it is the store they trained for.
        """
        if not cls.exists(path):
            try:
                created = cls.create(
                    path, net, rule, density, er_scale=er_scale, keep_scores=keep_scores
                )
                return created, True
            except Exception:
                if not cls.exists(path):  # failed for another reason than a faster creator
                    raise
        store = cls.open(path, writable=True)
        store.check_compatible(net.arch, net.outputs, net.seed, rule, density, er_scale)
        return store, False

    check_creatable = staticmethod(writer.check_creatable)

    @contextmanager
    def transaction(self, expect: StoreHeader | None = None) -> Iterator[writer.Transaction]:
        """One change under the lock (writer.py); this store shows it once committed."""
        with writer.transaction(self.path, expect) as change:
            yield change
        self.adopt(change.store)

    def append_task(
        self,
        mask_bits: np.ndarray,
        scores: np.ndarray | None,
        *,
        data: str,
        classes: Sequence[int],
        accuracy: float | None,
        train: dict[str, Any],
        created: str,
        seconds: float | None,
        task_stats: np.ndarray | None = None,
        log: Sequence[dict[str, Any]] = (),
        expect: StoreHeader | None = None,
    ) -> TaskRecord:
        """Append one task atomically under the writer lock; returns its record.

        `log` rows go to the audit log in the same commit; with `expect` (the header the caller
        last saw) nothing is written if another writer committed since.
        """
        about = {"data": data, "classes": classes, "accuracy": accuracy, "train": train}
        record, committed = writer.append_task(
            self,
            mask_bits,
            scores,
            record=about | {"created": created, "seconds": seconds},
            task_stats=task_stats,
            log=log,
            expect=expect,
        )
        self.adopt(committed)
        return record

    def replace_task(
        self,
        index: int,
        mask_bits: np.ndarray,
        score_change: np.ndarray,
        *,
        accuracy: float | None,
        train: dict[str, Any],
        seconds: float | None,
        log: Sequence[dict[str, Any]] = (),
        expect: StoreHeader | None = None,
    ) -> TaskRecord:
        """Replace a task's mask atomically (writer.replace_task)."""
        record, committed = writer.replace_task(
            self,
            index,
            mask_bits,
            score_change,
            accuracy=accuracy,
            train=train,
            seconds=seconds,
            log=log,
            expect=expect,
        )
        self.adopt(committed)
        return record

    def append_log(self, rows: Sequence[dict[str, Any]], expect: StoreHeader | None = None) -> None:
        """Append audit log rows (JSON objects) in one commit."""
        self.adopt(writer.append_log(self, rows, expect))

    def commit_hopfield(
        self, psi: np.ndarray, pattern_sum: np.ndarray, tasks: Sequence[int], based_on: int
    ) -> HopfieldState:
        """Psi as a new generation, committed (writer.commit_hopfield)."""
        state, committed = writer.commit_hopfield(self, psi, pattern_sum, tasks, based_on)
        self.adopt(committed)
        return state

    def drop_masks(self, tasks: Sequence[int]) -> HopfieldState:
        """Drop encoded tasks' mask rows (writer.drop_masks)."""
        state, committed = writer.drop_masks(self, tasks)
        self.adopt(committed)
        return state

    def verify(self) -> list[str]:
        """Full check (reader rule R13); [] if sound (verify.py)."""
        return verify.verify(self)

    def pack(
        self,
        codec: str = codecs.DEFAULT_CODEC,
        out: str | Path | None = None,
        drop_raw: bool = False,
        progress: Progress | None = None,
    ) -> codecs.PackReport:
        """Range-code every mask, in place or into a new store at `out` (copy.pack)."""
        from . import copy  # here: only the commands that copy or pack load it

        report = copy.pack(self, codec, out, drop_raw, progress)
        if out is None:
            self.adopt(StoreReader.open(self.path, writable=True))
        return report

    def copy_to(self, target: str | Path, progress: Progress | None = None) -> MaskStore:
        """This store, whole, at a new path or URL, verified (copy.copy_to)."""
        from . import copy

        copied = copy.copy_to(self, target, progress)
        return MaskStore(copied.path, copied.group, copied.header)
