"""Reading a store: open and check it, then its task records, masks (checksums checked), row map,
packed blobs, per-weight statistics, audit log, per-task statistics and Hopfield arrays. Never
writes: writer.py does, under the lock, through one transaction."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import zarr

from ..errors import (
    ConfigError,
    StoreError,
    StoreMismatchError,
    StoreNotFoundError,
    SupsupError,
    one_line,
)
from ..format import codecs
from ..format.architectures import NetConfig
from ..format.bits import unpack_mask
from ..format.header import (
    BLOB_LENGTH_BYTES,
    StoreHeader,
    TaskRecord,
    hopfield_checksum,
    is_int,
    mask_checksum,
    slot_digest,
)
from ..threads import cpu_threads
from . import layout, location
from .layout import (
    ATTRIBUTE_KEY,
    PACKED_ARRAY,
    SUPERSEDED,
    checked_arrays,
    checked_hopfield_arrays,
    chunk_limit,
    zarr_store,
)

MAX_CHECK_THREADS: Final = 8  # sha256 runs at ~2 GB/s a core: more would outrun the reads
SlabHook = Callable[[int, np.ndarray], None]  # (first row, rows just read)


class StoreReader:
    """An opened store: its header, task records, masks and per-weight statistics."""

    def __init__(self, path: str, group: zarr.Group, header: StoreHeader) -> None:
        self.path = path
        self.group = group
        self.header = header
        self.arrays = checked_arrays(group, header)
        # Decoded records of one header (a commit makes a new header): read once, not per call.
        self._records: tuple[StoreHeader, list[TaskRecord]] | None = None

    def adopt(self, other: StoreReader) -> None:
        """Take the state of the same store read again (after this process committed to it)."""
        self.path, self.group, self.header = other.path, other.group, other.header
        self.arrays, self._records = other.arrays, other._records

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether a fully created store is at `path` (creation commits its attributes last)."""
        try:
            store = zarr_store(location.normalise(path), writable=False)
            group = zarr.open_group(store, mode="r", zarr_format=3)
        except Exception:
            return False
        return ATTRIBUTE_KEY in group.attrs

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> StoreReader:
        """Open and check a store; any problem is one StoreError naming the path."""
        path = location.normalise(path)
        if not location.exists(path):
            raise StoreNotFoundError(f"{path}: no such store")
        limits = location.ReadLimits()  # metadata-sized until the header says what chunks hold
        try:
            store = zarr_store(path, writable, limits)
            group = zarr.open_group(store, mode="r+" if writable else "r", zarr_format=3)
        except SupsupError:
            raise
        except FileNotFoundError as error:  # a folder without zarr.json (or being created)
            raise StoreError(f"{path}: not a readable Zarr v3 group (no zarr.json)") from error
        except Exception as error:
            raise StoreError(f"{path}: not a readable Zarr v3 group ({one_line(error)})") from error
        if not isinstance(group, zarr.Group):
            raise StoreError(f"{path}: not a Zarr group")
        try:
            header = StoreHeader.from_attrs(group.attrs.get(ATTRIBUTE_KEY))
            limits.chunk_bytes = chunk_limit(header)
            return cls(path, group, header)
        except StoreError as error:
            raise StoreError(f"{path}: {error}") from error

    # -- reading ------------------------------------------------------------------------------
    @property
    def task_count(self) -> int:
        return self.header.task_count

    @property
    def net(self) -> NetConfig:
        return self.header.net

    def tasks(self) -> list[TaskRecord]:
        """All committed task records, in order."""
        if self._records is None or self._records[0] is not self.header:
            rows = self.read_rows("records", self.rows())
            self._records = (self.header, self._decode(rows, range(self.task_count)))
        return list(self._records[1])

    def task(self, index: int) -> TaskRecord:
        self.check_index(index)
        row = int(self.rows([index])[0])
        return self._decode(self.arrays["records"][row : row + 1], [index])[0]

    def _decode(self, rows: np.ndarray, indices: Sequence[int]) -> list[TaskRecord]:
        try:
            return TaskRecord.decode_rows(rows, indices, self.header)
        except StoreError as error:
            raise StoreError(f"{self.path}: {error}") from error

    def read_packed(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Packed masks (n, ceil(D/8)) of the given tasks (all by default), checksums checked."""
        indices, rows, records = self._wanted(indices)
        threads = max(1, min(MAX_CHECK_THREADS, cpu_threads()))
        with ThreadPoolExecutor(threads) as hashers:  # hashlib lets go of the GIL: all cores
            checks: list[Future] = []

            def check(start: int, slab: np.ndarray) -> None:  # runs while the next slab is read
                bounds = np.linspace(start, start + len(slab), threads + 1).astype(int)
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                    part = slab[lo - start : hi - start]
                    checks.append(
                        hashers.submit(self._check_masks, part, indices[lo:hi], records[lo:hi])
                    )

            packed = self.mask_rows(rows, check)
            for done in checks:
                done.result()
        return packed

    def _wanted(
        self, indices: Sequence[int] | None
    ) -> tuple[list[int], np.ndarray, list[TaskRecord]]:
        """The tasks whose masks a read asks for, checked: their rows and records."""
        indices = list(range(self.task_count)) if indices is None else list(indices)
        for index in indices:
            self.check_index(index)
        dropped = sorted(set(indices) & set(self.dropped_tasks()))
        if dropped:
            raise StoreError(
                f"{self.path}: the masks of task(s) {dropped} were dropped by "
                "`hopfield-encode --drop-masks`; only Hopfield recovery can use them"
            )
        rows = self.rows(indices)
        if self._records is not None and self._records[0] is self.header:
            records = [self._records[1][i] for i in indices]  # already read by tasks()
        else:  # only the wanted ones: O(n), not O(k)
            records = self._decode(self.read_rows("records", rows), indices)
        return indices, rows, records

    def _check_masks(
        self, packed: np.ndarray, indices: list[int], records: list[TaskRecord]
    ) -> None:
        for row, index, record in zip(packed, indices, records, strict=True):
            if mask_checksum(row) != record.sha256:
                raise StoreError(f"{self.path}: task {index}: mask bytes do not match their sha256")

    def iter_packed(self, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """read_packed in blocks of about READ_SLAB_BYTES, in order: for products over more masks
        than memory should hold (each block is checked as it is read)."""
        indices = list(range(self.task_count)) if indices is None else list(indices)
        per_block, chunk = (
            max(1, layout.READ_SLAB_BYTES // self.header.mask_bytes),
            self.header.row_chunk,
        )
        if per_block >= chunk:  # whole chunks per block: none is read twice
            per_block = per_block // chunk * chunk
        blocks = [indices[start : start + per_block] for start in range(0, len(indices), per_block)]

        def unchecked(block: list[int]) -> tuple[np.ndarray, list[int], list[TaskRecord]]:
            wanted, rows, records = self._wanted(block)
            return self.mask_rows(rows), wanted, records

        # Three stages on three threads: block i + 2 is read while block i + 1 is checked and
        # block i is with the caller.
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as checker:
            reads = deque(reader.submit(unchecked, block) for block in blocks[:2])
            upcoming = iter(blocks[2:])
            checks: deque[tuple[np.ndarray, Future]] = deque()
            while reads or checks:
                if reads:
                    packed, wanted, records = reads.popleft().result()
                    checks.append(
                        (packed, checker.submit(self._check_masks, packed, wanted, records))
                    )
                    if (following := next(upcoming, None)) is not None:
                        reads.append(reader.submit(unchecked, following))
                if len(checks) > 1 or not reads:
                    packed, check = checks.popleft()
                    check.result()
                    yield packed

    def read_mask(self, index: int) -> np.ndarray:
        """One task's mask as flat bool bits (D,), checksum checked."""
        return unpack_mask(self.read_packed([index])[0], self.header.mask_bits)

    def mask_counts(self) -> np.ndarray:
        """uint32 (D,): how many committed tasks keep each weight (the mean mask times k): the
        stored row where the store holds one, else summed from the masks."""
        if "mask_counts" in self.header.slot_arrays:
            return self.read_slot("mask_counts")
        return summed_counts(self)

    @property
    def keeps_scores(self) -> bool:
        """Whether the store sums its tasks' raw scores (what `--transfer` starts from)."""
        return "score_sum" in self.header.slot_arrays

    def score_mean(self) -> np.ndarray | None:
        """Mean raw scores (D,) float32 of the committed tasks (for --transfer); None for an
        empty store or one that keeps no score sums."""
        if self.task_count == 0 or not self.keeps_scores:
            return None
        return self.read_slot("score_sum") / np.float32(self.task_count)

    def read_slot(self, name: str) -> np.ndarray:
        """The current row of mask_counts or score_sum, checked against the header's sha256:
        a damaged row, or one rewritten by two commits since this store was opened, is refused."""
        row = self.arrays[name][self.header.slot]
        if self.header.slots is not None:
            if slot_digest(row, name) != self.header.slot_digest(name):
                raise StoreError(
                    f"{self.path}: {name} does not match its sha256 (damaged, or rewritten by "
                    "writers while this was reading; run again)"
                )
        return row

    def stored_bytes(self) -> int:
        """Bytes of all files of the store on disk."""
        return location.stored_bytes(self.path)

    # -- rows: where a task's mask and record live (version 2: through the task_rows table) ---
    def rows(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Rows of `masks` and `records` that hold the given tasks (all by default), int64."""
        if self.header.version == 1:
            table = np.arange(self.task_count, dtype=np.int64)
        else:
            rows = self.arrays["task_rows"][self.header.slot, : self.task_count]
            table = rows.astype(np.int64)
            if table.size and (
                table.max() >= self.header.rows or np.unique(table).size != table.size
            ):
                raise StoreError(
                    f"{self.path}: task_rows must map the tasks to distinct rows "
                    f"< {self.header.rows}"
                )
        return table if indices is None else table[np.asarray(indices, dtype=np.int64)]

    def read_rows(self, name: str, rows: np.ndarray, on_slab: SlabHook | None = None) -> np.ndarray:
        """Rows of a per-row array, in the given order, read in slabs of about READ_SLAB_BYTES
        into one output: zarr's per-chunk buffers never hold more than one slab at a time.
        `on_slab(start, slab)` is given each slab as soon as it is in the output."""
        array = self.arrays[name]
        out = np.empty((rows.size, array.shape[1]), dtype=array.dtype)
        chunk = array.chunks[0]  # whole chunks per slab: none is fetched twice
        step = max(1, layout.READ_SLAB_BYTES // max(1, array.shape[1] * array.dtype.itemsize))
        step = max(chunk, step // chunk * chunk)
        first = int(rows[0]) if rows.size else 0
        in_order = np.array_equal(rows, np.arange(first, first + rows.size))  # one slice
        for start in range(0, rows.size, step):
            stop = min(rows.size, start + step)
            out[start:stop] = (
                array[first + start : first + stop]
                if in_order
                else array.get_orthogonal_selection((rows[start:stop], slice(None)))
            )
            if on_slab is not None:
                on_slab(start, out[start:stop])
        return out

    def mask_rows(self, rows: np.ndarray, on_slab: SlabHook | None = None) -> np.ndarray:
        """Mask bytes (n, B) of the given rows: raw, or decoded from their blobs (format/codecs.py)
        where the raw rows were dropped (reader rule R11); `on_slab` as in read_rows."""
        state = self.header.packed
        if state is None or not state.dropped:
            return self.read_rows("masks", rows, on_slab)
        blobs, superseded = self.blobs(rows)
        coded = np.array([int(r) in blobs and int(r) not in superseded for r in rows], dtype=bool)
        out = np.empty((rows.size, self.header.mask_bytes), dtype=np.uint8)
        if not coded.all():
            out[~coded] = self.read_rows("masks", rows[~coded])
        if coded.any():
            sites = [math.prod(shape) for shape in self.net.mask_shapes]
            codec = codecs.get_codec(state.codec)
            out[coded] = codecs.decode_packed(codec, blobs, sites, rows[coded].tolist())
        if on_slab is not None:
            on_slab(0, out)
        return out

    def blobs(self, rows: np.ndarray) -> tuple[dict[int, bytes], set[int]]:
        """The non-empty blobs of the given rows (context codecs: of every row up to the last),
        and which of them a later raw row superseded (still the context of the next blob)."""
        state = self.header.packed
        wanted = rows[rows < state.rows]
        if codecs.get_codec(state.codec).uses_previous and wanted.size:
            wanted = np.arange(int(wanted.max()) + 1)
        blobs, superseded = {}, set()
        for row, framed in zip(wanted, self.read_rows(PACKED_ARRAY, wanted), strict=True):
            word = int.from_bytes(framed[:BLOB_LENGTH_BYTES].tobytes(), "little")
            length = word & ~SUPERSEDED
            padding = framed[BLOB_LENGTH_BYTES + length :]
            if length > state.width - BLOB_LENGTH_BYTES or padding.any():
                raise StoreError(f"{self.path}: packed row {row} has a bad length or padding")
            if length:
                blobs[int(row)] = framed[BLOB_LENGTH_BYTES : BLOB_LENGTH_BYTES + length].tobytes()
            if word & SUPERSEDED:
                superseded.add(int(row))
        return blobs, superseded

    def free_row(self) -> int:
        """Where the next mask goes: the row a replace left unused, else a new row at the end."""
        if self.header.version == 1:
            return self.task_count
        used = np.zeros(self.header.rows, dtype=bool)
        used[self.rows()] = True
        free = np.flatnonzero(~used)
        return int(free[0]) if free.size else self.header.rows

    # -- the audit log (rows written by `supsup allocate`; JSON objects, see the spec) ----------
    def read_log(self) -> list[dict[str, Any]]:
        """The committed audit log rows, oldest first."""
        count = self.header.log_count
        if count == 0:
            return []
        rows = []
        for position, row in enumerate(self.arrays["log"][:count]):
            try:
                value = json.loads(bytes(row).rstrip(b"\0").decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise StoreError(
                    f"{self.path}: log row {position} is not JSON ({error})"
                ) from error
            if not isinstance(value, dict):
                raise StoreError(f"{self.path}: log row {position} is not a JSON object")
            rows.append(value)
        return rows

    # -- per-task statistics and the Hopfield energy (learn/hopfield.py computes) ---
    def read_task_stats(self, index: int) -> np.ndarray:
        """One task's BatchNorm statistics, float32 (stats_size,), for nets that keep them."""
        self.check_index(index)
        if "task_stats" not in self.arrays:
            raise StoreError(f"{self.path}: {self.net.arch} keeps no per-task statistics")
        row = self.arrays["task_stats"][int(self.rows([index])[0])]
        if not np.all(np.isfinite(row)):
            raise StoreError(f"{self.path}: task {index}: statistics hold non-finite values")
        return np.ascontiguousarray(row, dtype=np.float32)

    def dropped_tasks(self) -> tuple[int, ...]:
        """Tasks whose mask rows were dropped after Hopfield encoding (only Psi holds them)."""
        return () if self.header.hopfield is None else self.header.hopfield.dropped

    def hopfield_summary(self) -> dict[str, Any] | None:
        """What `info` shows of the energy: tasks encoded, d, Psi's bytes, masks kept or dropped."""
        state = self.header.hopfield
        if state is None:
            return None
        d = self.header.mask_bits
        dropped = state.dropped
        masks = "kept" if not dropped else "dropped" if dropped == state.tasks else "some"
        return {
            "tasks": list(state.tasks),
            "dropped": list(dropped),
            "masks": masks,
            "d": d,
            "dtype": "float32",
            "psi_bytes": d * d * 4,
        }

    def read_hopfield(self) -> tuple[np.ndarray, np.ndarray]:
        """Psi float32 (d, d) and the sum of the encoded +-1 patterns int32 (d,), checksummed."""
        state = self.header.hopfield
        if state is None:
            raise StoreError(f"{self.path}: no task is Hopfield-encoded (run hopfield-encode)")
        try:
            arrays = checked_hopfield_arrays(self.group, self.header, state)
        except StoreError as error:
            raise StoreError(f"{self.path}: {error}") from error
        psi, pattern_sum = (array[...] for array in arrays)
        if hopfield_checksum(psi, pattern_sum) != state.sha256:
            raise StoreError(f"{self.path}: the Hopfield matrix does not match its sha256")
        return psi, pattern_sum

    def check_index(self, index: int) -> None:
        if not is_int(index) or not 0 <= index < self.task_count:
            raise ConfigError(
                f"task {index} is out of range: the store holds {self.task_count} task(s)"
                + (f" (0..{self.task_count - 1})" if self.task_count else "")
            )

    def check_compatible(
        self,
        arch: str | None = None,
        outputs: int | None = None,
        seed: int | None = None,
        mask_rule: str | None = None,
        density: float | None = None,
        er_scale: float | None = None,
    ) -> None:
        """Refuse creation options that contradict the existing store (None means 'not given')."""
        wanted = {
            "arch": arch,
            "outputs": outputs,
            "seed": seed,
            "mask-rule": mask_rule,
            "density": density,
            "er-scale": er_scale,
        }
        have = {
            "arch": self.net.arch,
            "outputs": self.net.outputs,
            "seed": self.net.seed,
            "mask-rule": self.header.mask_rule,
            "density": self.header.density,
            "er-scale": self.header.er_scale,
        }
        for name, value in wanted.items():
            if value is not None and value != have[name]:
                raise StoreMismatchError(
                    f"{self.path}: --{name} {value} contradicts the store, made with --{name} "
                    f"{have[name]} (creation options apply to new stores only)"
                )


def summed_counts(store: StoreReader) -> np.ndarray:
    """uint32 (D,): the store's masks summed block by block (a Hopfield-dropped task's bits
    from the pattern sum, reader rule R13): its counts where it stores none."""
    bits = store.header.mask_bits
    dropped = set(store.dropped_tasks())
    kept = [task for task in range(store.task_count) if task not in dropped]
    encoded = set() if not dropped else set(store.header.hopfield.tasks)
    total = np.zeros(bits, dtype=np.int64)
    encoded_kept = np.zeros(bits, dtype=np.int64)
    done = 0
    for block in store.iter_packed(kept):  # (n, B), checksums checked
        unpacked = unpack_mask(block, bits)  # (n, D) bool
        total += unpacked.sum(axis=0)
        which = [i for i, task in enumerate(kept[done : done + len(block)]) if task in encoded]
        if which:
            encoded_kept += unpacked[which].sum(axis=0)
        done += len(block)
    if dropped:
        total += dropped_counts(store, encoded_kept, store.read_hopfield()[1])
    return total.astype(np.uint32)


def dropped_counts(
    store: StoreReader, encoded_kept: np.ndarray, pattern_sum: np.ndarray
) -> np.ndarray:
    """int64 (D,): per weight, the dropped masks that keep it: the Hopfield pattern sum's ones
    less the kept encoded masks' (`encoded_kept`); refused where no such count exists."""
    state = store.header.hopfield
    ones = pattern_sum.astype(np.int64) + len(state.tasks)  # 2 x (ones of the masks)
    if np.any(ones % 2) or np.any(ones < 0):
        raise StoreError("the Hopfield pattern sum is not a sum of +-1 patterns")
    dropped = ones // 2 - encoded_kept
    if np.any(dropped < 0) or np.any(dropped > len(state.dropped)):
        raise StoreError("the Hopfield pattern sum disagrees with the kept masks")
    return dropped
