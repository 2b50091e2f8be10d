"""How masks relate and what they select: overlap between tasks, merged masks, exported subnets.

Overlaps are computed from the bit-packed masks one block of columns at a time (a k x k Gram
matrix of unpacked blocks), so the unpacked floats stay near GRAM_BLOCK_FLOATS whatever k and D.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import torch

from ..errors import ConfigError
from ..format.bits import unpack_mask
from ..format.header import TaskRecord
from ..model.nets import MaskedMLP, build_net
from ..model.supermask import split_flat
from ..store import MaskStore
from .choices import MERGE_RULES
from .data import merge_spec

EXPORT_FORMATS: Final = (".pt", ".npz")
GRAM_BLOCK_FLOATS: Final = 1 << 25  # unpacked float32 bits per block (128 MiB), all k tasks


@dataclass(frozen=True)
class Overlap:
    """Pairwise relations of task masks: shared kept weights, Jaccard index, Hamming distance."""

    tasks: tuple[int, ...]
    ones: np.ndarray  # (k,) int64: kept weights per task
    shared: np.ndarray  # (k, k) int64: weights kept by both tasks
    mask_bits: int

    @property
    def jaccard(self) -> np.ndarray:
        """(k, k) |A ∩ B| / |A ∪ B|; 1 where both masks are empty."""
        union = self.ones[:, None] + self.ones[None, :] - self.shared  # (k, k)
        return np.where(union > 0, self.shared / np.maximum(union, 1), 1.0)

    @property
    def hamming(self) -> np.ndarray:
        """(k, k) int64 count of positions where the two masks differ."""
        return self.ones[:, None] + self.ones[None, :] - 2 * self.shared


def mask_overlap(store: MaskStore, tasks: Sequence[int] | None = None) -> Overlap:
    """Jaccard and Hamming between every pair of the given tasks (all by default)."""
    if not store.task_count:
        raise ConfigError(f"{store.path}: the store holds no tasks; train one first")
    indices = list(range(store.task_count)) if tasks is None else [int(t) for t in tasks]
    packed = store.read_packed(indices)  # (k, B) uint8, checksums checked
    bits = store.header.mask_bits
    shared = np.zeros((len(indices), len(indices)), dtype=np.float64)
    step = max(1, GRAM_BLOCK_FLOATS // (8 * max(1, len(indices))))  # packed bytes per block
    for start in range(0, packed.shape[1], step):
        stop = min(packed.shape[1], start + step)
        count = min(8 * stop, bits) - 8 * start
        block = np.unpackbits(packed[:, start:stop], axis=1, count=count, bitorder="big")
        block = block.astype(np.float32)  # (k, b): counts below 2^24 per block stay exact
        shared += block @ block.T
    shared = shared.round().astype(np.int64)
    return Overlap(tuple(indices), np.diag(shared).copy(), shared, bits)


def merge_masks(packed: np.ndarray, mask_bits: int, rule: str) -> np.ndarray:
    """Combine packed masks (n, B) into one flat bool mask (D,): and, or, or strict majority."""
    if rule not in MERGE_RULES:
        raise ConfigError(f"unknown merge rule {rule!r}; valid rules: {', '.join(MERGE_RULES)}")
    if rule == "and":
        return unpack_mask(np.bitwise_and.reduce(packed, axis=0), mask_bits)
    if rule == "or":
        return unpack_mask(np.bitwise_or.reduce(packed, axis=0), mask_bits)
    votes = unpack_mask(packed, mask_bits).sum(axis=0)  # (D,) kept-by count
    return 2 * votes > len(packed)  # ties (even n) are not a majority: the weight is dropped


def merge_tasks(store_path: str | Path, tasks: Sequence[int], rule: str) -> TaskRecord:
    """Append the merge of existing tasks' masks as a new task, recorded as derived from them."""
    if rule not in MERGE_RULES:
        raise ConfigError(f"unknown merge rule {rule!r}; valid rules: {', '.join(MERGE_RULES)}")
    parents = [int(t) for t in tasks]
    if len(set(parents)) != len(parents) or len(parents) < 2:
        raise ConfigError(f"merge needs at least two distinct tasks, got {parents}")
    store = MaskStore.open(store_path)
    if store.net.stats_size:
        raise ConfigError(
            f"{store.net.arch} keeps per-task normalisation statistics; merged masks have none"
        )
    records = [store.task(t) for t in parents]  # range checks first
    bits = merge_masks(store.read_packed(parents), store.header.mask_bits, rule)
    mean = store.score_mean()  # adding the current mean leaves the transfer mean unchanged
    return store.append_task(
        bits,
        mean,
        data=merge_spec(parents, rule),
        classes=sorted({c for r in records for c in r.classes}),
        accuracy=None,
        train={
            "derived": "merge",
            "rule": rule,
            "parents": parents,
            "kept": float(bits.mean()),
        },
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=None,
    )


@dataclass(frozen=True)
class Export:
    """What export wrote: the file, its tensors' names and shapes, and the kept weights."""

    path: Path
    task: int
    shapes: dict[str, tuple[int, ...]]
    kept: int
    total: int


def subnetwork(store: MaskStore, task: int) -> dict[str, torch.Tensor]:
    """One task's dense subnetwork: per masked layer, its fixed weights times the task's mask."""
    net = build_net(store.net)
    if not isinstance(net, MaskedMLP):
        raise ConfigError(
            f"export needs a network whose masks cover weights; {store.net.arch} masks channels"
        )
    bits = store.read_mask(task)  # (D,) bool
    masks = split_flat(torch.from_numpy(bits), store.net.mask_shapes)
    return {
        f"layers.{index}.weight": layer.weight * mask  # (out, in) float32
        for index, (layer, mask) in enumerate(zip(net.layers, masks, strict=True))
    }


def export_task(store_path: str | Path, task: int, out: Path) -> Export:
    """Write a task's subnetwork as .pt (torch.save of a tensor dict) or .npz; never overwrite."""
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ConfigError(
            f"--out must end in {' or '.join(EXPORT_FORMATS)} (got {out.name!r}); the format "
            "follows the suffix"
        )
    if out.exists():
        raise ConfigError(f"{out}: already exists; choose another --out")
    store = MaskStore.open(store_path)
    tensors = subnetwork(store, task)
    partial = out.with_name(f".{out.name}.partial")
    try:
        if suffix == ".pt":
            torch.save({k: v.contiguous() for k, v in tensors.items()}, partial)
        else:
            with partial.open("wb") as handle:
                np.savez(handle, **{k: v.numpy() for k, v in tensors.items()})
        partial.rename(out)  # whole file or nothing
    finally:
        partial.unlink(missing_ok=True)
    kept = sum(int(torch.count_nonzero(t)) for t in tensors.values())
    return Export(
        out,
        task,
        {k: tuple(v.shape) for k, v in tensors.items()},
        kept,
        sum(t.numel() for t in tensors.values()),
    )
