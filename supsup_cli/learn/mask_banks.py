"""The mask bank: what task inference needs from a store, loaded once and queried many times.

One interface (`MaskBank`) and one class per place the packed masks live: host memory
(`HostMaskBank`: the C kernel or numpy products), device memory (`DeviceMaskBank`: torch products
where the tensors are), or left in the store and read in blocks for every product
(`StreamedMaskBank`: memory does not grow with the number of tasks). `MaskBank.from_store` and
`MaskBank.from_packed` pick the backing; the methods of task inference see only the interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..format.architectures import NetConfig
from ..format.bits import unpack_mask
from ..kernels.products import packed_matmul, packed_rmatvec
from ..kernels.torch_products import packed_matmul_torch, packed_rmatvec_torch
from ..model.nets import build_net
from ..model.supermask import bits_to_masks
from ..store import MaskStore
from .objectives import superfluous_outputs


def mask_counts_of(packed: np.ndarray, mask_bits: int) -> np.ndarray:
    """Per-weight counts Σᵢ Mᵢ of packed masks (uint32 (D,)), without unpacking all at once."""
    ones = np.ones(packed.shape[0], dtype=np.float32)
    return np.rint(packed_rmatvec(packed, ones, mask_bits)).astype(np.uint32)


def host_products(
    packed: np.ndarray, matrix: torch.Tensor, device: torch.device, mask_bits: int
) -> torch.Tensor:
    """⟨Mᵢ, matrix⟩ for packed masks in host memory (k, B), computed on `device`:
    (D,) or (D, m) -> (k,) or (k, m)."""
    if device.type == "cpu":
        return torch.from_numpy(packed_matmul(packed, matrix.detach().numpy(), mask_bits))
    packed_t = torch.from_numpy(packed).to(device)
    return packed_matmul_torch(packed_t, matrix.detach(), mask_bits)


def host_block_products(
    packed: np.ndarray,
    blocks: Iterable[tuple[int, torch.Tensor]],
    columns: int,
    device: torch.device,
) -> torch.Tensor:
    """⟨Mᵢ, matrix⟩ for packed masks in host memory and a matrix in (start, rows) blocks of D:
    each block times its slice of bytes, summed in block order (k, columns)."""
    total = torch.zeros((packed.shape[0], columns), device=device)
    for start, block in blocks:
        first, last = _byte_span(start, len(block))
        total += host_products(packed[:, first:last], block, device, len(block))
    return total


def _byte_span(start: int, rows: int) -> tuple[int, int]:
    """The packed bytes of mask bits [start, start + rows); start must begin a byte."""
    if start % 8:
        raise ValueError(f"a block of the matrix must start at a multiple of 8, not {start}")
    return start // 8, -(-(start + rows) // 8)


@dataclass(frozen=True, eq=False, kw_only=True)
class MaskBank(ABC):
    """Packed masks (kept by a subclass), their counts, classes and the fixed network, on one
    device. A long-running process keeps one bank and queries it many times (the warm path).

    Rows are the bank's tasks in order; `task_id` maps a row to the store's task index.
    """

    config: NetConfig
    net: nn.Module
    counts: np.ndarray  # (D,) uint32: how many tasks keep each weight
    task_classes: tuple[tuple[int, ...], ...]
    device: torch.device
    task_specs: tuple[str, ...] = ()  # the data spec each task was trained on, when known
    # The store's task index of each row (rows skip tasks whose masks were dropped); () = 0..k-1.
    task_ids: tuple[int, ...] = ()
    task_stats: np.ndarray | None = None  # (k, S) float32 per-task statistics (BatchNorm nets)

    # -- what each backing provides ---------------------------------------------------------

    @property
    @abstractmethod
    def task_count(self) -> int:
        """k, the number of rows (tasks whose masks take part)."""

    @abstractmethod
    def products(self, matrix: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """⟨Mᵢ, matrix⟩ for the masks `rows` (all by default): (D,) or (D, m) -> (r,) or (r, m)."""

    @abstractmethod
    def subset_sum(self, rows: np.ndarray) -> torch.Tensor:
        """Σ_{i ∈ rows} Mᵢ, float32 (D,) (on the host or the device, as the backing computes it)."""

    @abstractmethod
    def packed_row(self, row: int) -> np.ndarray:
        """One row's packed mask in host memory, (B,) uint8."""

    @abstractmethod
    def block_products(
        self, blocks: Iterable[tuple[int, torch.Tensor]], columns: int
    ) -> torch.Tensor:
        """⟨Mᵢ, matrix⟩ for a (D, columns) matrix given as (start, rows) blocks in order (starts
        at multiples of 8), each multiplied by its slice of the masks' bytes: (k, columns)."""

    # -- what every backing shares --------------------------------------------------------------

    @property
    def mask_bits(self) -> int:
        return self.config.mask_bits

    def mean_mask(self, rows: np.ndarray | None = None) -> torch.Tensor:
        """The superposition's mask Σ αᵢ Mᵢ with α = 1/|rows|, float32 (D,) on the device."""
        if rows is None:
            total = torch.from_numpy(self.counts.astype(np.float32))
            return (total / self.task_count).to(self.device)
        return (self.subset_sum(rows) / len(rows)).to(self.device)

    def masks_of(self, row: int) -> list[torch.Tensor]:
        """One row's float 0/1 masks, one per site, on the device."""
        bits = unpack_mask(self.packed_row(row), self.mask_bits)
        return bits_to_masks(bits, self.config.mask_shapes, self.device)

    def superfluous(self) -> torch.Tensor:
        """Outputs that no stored task uses (on the bank's device)."""
        used = [c for classes in self.task_classes for c in classes]
        return superfluous_outputs(self.config.outputs, used).to(self.device)

    def use_task_stats(self, row: int) -> None:
        """Load one row's normalisation statistics into the net (nets that keep them)."""
        if self.task_stats is not None:
            self.net.load_task_stats(torch.from_numpy(self.task_stats[row]).to(self.device))

    def task_id(self, row: int) -> int:
        """The store's index of the task in a row."""
        return self.task_ids[row] if self.task_ids else row

    # -- the factories: they pick the backing ------------------------------------------------

    @classmethod
    def from_store(
        cls, store: MaskStore, device: torch.device | str = "cpu", stream: bool = False
    ) -> MaskBank:
        """Load the committed tasks whose masks the store keeps (checksums checked by the store);
        with `stream`, leave the masks in the store and read them for each product instead.

        Tasks whose masks were dropped after Hopfield encoding cannot take part: their bits are
        gone, so the bank skips them and sums its counts from the kept masks.
        """
        if store.task_count == 0:
            raise ConfigError(f"{store.path}: the store holds no tasks; train one first")
        dropped = set(store.dropped_tasks())
        kept = [i for i in range(store.task_count) if i not in dropped]
        if not kept:
            raise ConfigError(
                f"{store.path}: every task's mask was dropped after Hopfield encoding; "
                "only Hopfield recovery can infer its tasks"
            )
        records = store.tasks()
        stats = None
        if store.net.stats_size:
            stats = np.stack([store.read_task_stats(i) for i in kept])
        if stream:
            counts = store.mask_counts()
            if dropped:  # the stored counts include the dropped masks: sum the kept ones
                counts = np.zeros(store.net.mask_bits, dtype=np.uint32)
                for block in store.iter_packed(kept):
                    counts += mask_counts_of(block, store.net.mask_bits)
            device = torch.device(device)
            return StreamedMaskBank(
                config=store.net,
                net=build_net(store.net, device),
                counts=counts,
                task_classes=tuple(tuple(records[i].classes) for i in kept),
                device=device,
                task_specs=tuple(records[i].data for i in kept),
                task_ids=tuple(kept),
                task_stats=stats,
                source=store,
            )
        return cls.from_packed(
            store.net,
            store.read_packed(kept),
            [records[i].classes for i in kept],
            counts=None if dropped else store.mask_counts(),
            device=device,
            task_specs=[records[i].data for i in kept],
            task_ids=kept,
            task_stats=stats,
        )

    @classmethod
    def from_packed(
        cls,
        config: NetConfig,
        packed: np.ndarray,
        task_classes: Sequence[Sequence[int]],
        *,
        counts: np.ndarray | None = None,
        device: torch.device | str = "cpu",
        task_specs: Sequence[str] = (),
        task_ids: Sequence[int] = (),
        task_stats: np.ndarray | None = None,
    ) -> MaskBank:
        """A bank from packed masks in memory, held on the host for the CPU and on the device
        otherwise; counts are summed from the bits when not given."""
        device = torch.device(device)
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if len(task_classes) != packed.shape[0]:
            raise ValueError(f"{len(task_classes)} class lists for {packed.shape[0]} masks")
        if counts is None:
            counts = mask_counts_of(packed, config.mask_bits)
        shared = {
            "config": config,
            "net": build_net(config, device),
            "counts": np.asarray(counts),
            "task_classes": tuple(tuple(int(c) for c in classes) for classes in task_classes),
            "device": device,
            "task_specs": tuple(task_specs),
            "task_ids": tuple(int(i) for i in task_ids),
            "task_stats": task_stats,
        }
        if device.type == "cpu":
            return HostMaskBank(**shared, packed=packed)
        on_device = torch.from_numpy(packed).to(device)
        return DeviceMaskBank(**shared, packed=packed, packed_on_device=on_device)


@dataclass(frozen=True, eq=False, kw_only=True)
class HostMaskBank(MaskBank):
    """Masks held packed in host memory; products by the C kernel (or numpy, block by block)."""

    packed: np.ndarray  # (k, ceil(D/8)) uint8

    @property
    def task_count(self) -> int:
        return self.packed.shape[0]

    def products(self, matrix: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        block = self.packed if rows is None else self.packed[rows]
        return host_products(block, matrix, self.device, self.mask_bits)

    def block_products(
        self, blocks: Iterable[tuple[int, torch.Tensor]], columns: int
    ) -> torch.Tensor:
        return host_block_products(self.packed, blocks, columns, self.device)  # one block held

    def subset_sum(self, rows: np.ndarray) -> torch.Tensor:
        ones = np.ones(len(rows), dtype=np.float32)
        return torch.from_numpy(packed_rmatvec(self.packed[rows], ones, self.mask_bits))

    def packed_row(self, row: int) -> np.ndarray:
        return self.packed[row]


@dataclass(frozen=True, eq=False, kw_only=True)
class DeviceMaskBank(MaskBank):
    """Masks held packed on the device (torch products where the tensors live: the CUDA path).

    The host copy serves single rows (classification) and callers that read the bits.
    """

    packed: np.ndarray  # (k, ceil(D/8)) uint8, host memory
    packed_on_device: torch.Tensor  # (k, ceil(D/8)) uint8 on the device

    @property
    def task_count(self) -> int:
        return self.packed.shape[0]

    def products(self, matrix: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        packed_t = self.packed_on_device
        if rows is not None:
            packed_t = packed_t[torch.as_tensor(rows, device=self.device)]
        return packed_matmul_torch(packed_t, matrix.detach(), self.mask_bits)

    def block_products(
        self, blocks: Iterable[tuple[int, torch.Tensor]], columns: int
    ) -> torch.Tensor:
        total = torch.zeros((self.task_count, columns), device=self.device)
        for start, block in blocks:
            first, last = _byte_span(start, len(block))
            packed_t = self.packed_on_device[:, first:last]
            total += packed_matmul_torch(packed_t, block.detach(), len(block))
        return total

    def subset_sum(self, rows: np.ndarray) -> torch.Tensor:
        picked = self.packed_on_device[torch.as_tensor(rows, device=self.device)]
        ones = torch.ones(len(rows), device=self.device)
        return packed_rmatvec_torch(picked, ones, self.mask_bits)

    def packed_row(self, row: int) -> np.ndarray:
        return self.packed[row]


@dataclass(frozen=True, eq=False, kw_only=True)
class StreamedMaskBank(MaskBank):
    """Masks left in the store: every product reads them in blocks (StoreReader.iter_packed), so
    memory does not grow with the number of tasks; each query re-reads them."""

    source: MaskStore

    @property
    def task_count(self) -> int:
        return len(self.task_ids)

    def products(self, matrix: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        parts = [
            host_products(block, matrix, self.device, self.mask_bits)
            for block in self._blocks(rows)
        ]
        return torch.cat(parts) if parts else torch.zeros((0, *matrix.shape[1:]))

    def block_products(
        self, blocks: Iterable[tuple[int, torch.Tensor]], columns: int
    ) -> torch.Tensor:
        blocks = list(blocks)  # every block of masks read needs the whole matrix
        parts = [
            host_block_products(packed, blocks, columns, self.device)
            for packed in self._blocks(None)
        ]
        return torch.cat(parts) if parts else torch.zeros((0, columns))

    def subset_sum(self, rows: np.ndarray) -> torch.Tensor:
        total = torch.zeros(self.mask_bits)
        for block in self._blocks(rows):
            ones = np.ones(len(block), dtype=np.float32)
            total += torch.from_numpy(packed_rmatvec(block, ones, self.mask_bits))
        return total

    def packed_row(self, row: int) -> np.ndarray:
        return self.source.read_packed([self.task_id(row)])[0]

    def _blocks(self, rows: np.ndarray | None) -> Iterator[np.ndarray]:
        """The masks of `rows` (all by default) read from the store, in blocks, in order."""
        wanted = self.task_ids if rows is None else [self.task_ids[int(r)] for r in rows]
        return self.source.iter_packed(wanted)
