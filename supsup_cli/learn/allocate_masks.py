"""allocate's in-memory view of the known masks: packed rows kept current as masks train, their
per-weight counts, what each mask learned, and the untrained masks that pad a decision to k'.

A mask made before the run is resumed from its bits (`resumed_scores`), since the store keeps
masks, not scores; a new mask starts from the same per-task seed train-task uses (`fresh_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..format.architectures import NetConfig
from ..format.bits import pack_mask, unpack_mask
from ..format.header import TaskRecord, mask_checksum
from ..model.supermask import ScoreMasks, split_flat
from ..store import MaskStore
from .allocate_rule import candidate_count
from .train import initial_scores, score_init_seed


def fresh_scores(config: NetConfig, index: int) -> list[torch.Tensor]:
    """The initial scores of mask `index`: the same per-task seed train-task uses."""
    return initial_scores(config.mask_shapes, score_init_seed(config.seed, index), None)


def resumed_scores(bits: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Scores that give back a stored mask under either rule: b·(m − ¼), b = 1/√fan_in.

    Kept weights get +¾b and dropped ones −¼b: the sign rule keeps exactly the ones, and so does
    top-k (|¾b| > |¼b|, and a stored top-k mask keeps the rule's count). Magnitudes stay within
    the initial range, so training moves them as it moves fresh scores.
    """
    flat = torch.from_numpy(np.asarray(bits, dtype=np.float32).ravel()) - 0.25  # (D,)
    parts = split_flat(flat, shapes)
    return [part * (1.0 / math.sqrt(shape[1])) for part, shape in zip(parts, shapes, strict=True)]


@dataclass
class MaskInfo:
    """What a known mask was trained on and how (its task record, as the run will write it)."""

    data: str
    classes: tuple[int, ...]
    train: dict[str, Any]
    seconds: float = 0.0

    @classmethod
    def of(cls, record: TaskRecord) -> MaskInfo:
        return cls(record.data, tuple(record.classes), dict(record.train), record.seconds or 0.0)


@dataclass
class KnownMasks:
    """The masks a run knows, rows in task order: the stored ones first (`stored` of them, as
    this run last saw them in the store), then at most one new mask not yet written."""

    config: NetConfig
    rule: str
    density: float | None
    packed: np.ndarray  # (k, B) uint8: the current masks, stored ones updated as they train
    counts: np.ndarray  # (D,) int64: Σ of the current masks
    info: list[MaskInfo]
    stored_sha: list[str]  # sha256 of each task's mask as this run last saw it in the store
    placeholders: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of_store(cls, store: MaskStore) -> KnownMasks:
        """The store's committed masks, counts and records."""
        records = store.tasks()
        return cls(
            config=store.net,
            rule=store.header.mask_rule,
            density=store.header.density,
            packed=np.array(store.read_packed(), dtype=np.uint8),
            counts=store.mask_counts().astype(np.int64),
            info=[MaskInfo.of(r) for r in records],
            stored_sha=[r.sha256 for r in records],
        )

    @classmethod
    def empty(cls, config: NetConfig, rule: str, density: float | None) -> KnownMasks:
        """No masks yet (the store is made at the run's first commit)."""
        return cls(
            config=config,
            rule=rule,
            density=density,
            packed=np.zeros((0, (config.mask_bits + 7) // 8), dtype=np.uint8),
            counts=np.zeros(config.mask_bits, dtype=np.int64),
            info=[],
            stored_sha=[],
        )

    @property
    def known(self) -> int:
        return self.packed.shape[0]

    @property
    def stored(self) -> int:
        """How many rows are tasks of the store (the rest: a new mask not yet written)."""
        return len(self.stored_sha)

    def bits(self, index: int) -> np.ndarray:
        """One mask's bits as they are now, (D,) uint8."""
        return unpack_mask(self.packed[index], self.config.mask_bits)

    def candidates(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """What a decision weighs: the known masks padded with untrained ones to k' (packed
        (k', B)), their per-weight counts (D,), and the classes the masks were trained on."""
        missing = candidate_count(self.known) - self.known
        extra = [self.placeholder(self.known + j) for j in range(missing)]
        packed, counts = self.packed, self.counts
        if extra:
            packed = np.concatenate([packed, np.stack(extra)])
            counts = counts + unpack_mask(np.stack(extra), self.config.mask_bits).sum(0)
        classes = sorted({c for mask in self.info for c in mask.classes})
        return packed, counts, classes

    def placeholder(self, index: int) -> np.ndarray:
        """The mask a new mask `index` starts as: its fresh scores under the store's rule."""
        if index not in self.placeholders:
            masks = ScoreMasks(fresh_scores(self.config, index), self.rule, self.density)
            self.placeholders[index] = pack_mask(masks.mask_bits())
        return self.placeholders[index]

    def add(self, info: MaskInfo) -> int:
        """A new mask after the known ones, starting as its placeholder; its index."""
        index = self.known
        placeholder = self.placeholder(index)
        self.packed = np.concatenate([self.packed, placeholder[None]])
        self.counts += unpack_mask(placeholder, self.config.mask_bits)
        self.info.append(info)
        return index

    def update(self, index: int, bits: np.ndarray) -> None:
        """A mask's row and the counts after training changed its bits."""
        self.counts += bits.astype(np.int64) - self.bits(index)
        self.packed[index] = pack_mask(bits)

    def mark_stored(self, index: int) -> None:
        """The store now holds mask `index` as it is (appended, or replaced in place)."""
        self.stored_sha[index : index + 1] = [mask_checksum(self.packed[index])]

    def matches(self, records: Sequence[TaskRecord]) -> bool:
        """Whether the store still holds every stored mask as this run last saw it."""
        return len(records) >= self.stored and all(
            r.sha256 == sha for r, sha in zip(records, self.stored_sha, strict=False)
        )

    def take_in(self, extra: np.ndarray, records: Sequence[TaskRecord]) -> None:
        """Tasks another writer appended (packed `extra`, their records) become known masks
        after the stored ones; the unwritten new mask, if any, moves after them."""
        known = self.stored
        self.packed = np.concatenate([self.packed[:known], extra, self.packed[known:]])
        self.counts += unpack_mask(extra, self.config.mask_bits).sum(0, dtype=np.int64)
        self.info[known:known] = [MaskInfo.of(r) for r in records]
        self.stored_sha += [r.sha256 for r in records]
        self.placeholders.clear()  # they pad the candidates from `known` on: recomputed lazily
