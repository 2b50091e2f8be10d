"""The mask store: its arrays, reads and commits (layout and rules in formats/supsup-store-v1.md;
the header and task records it reads and writes are modelled in store_header.py).

A Zarr v3 group holding the network config and the seed (never weights), one bit-packed mask per
task, a JSON record per task, and double-buffered per-weight mask counts and score sums. Appends
write rows past the committed count, then bump the count: readers never see half a task.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import zarr

from . import pack, storage
from .bits import pack_mask, packed_bytes, padding_is_zero, unpack_mask
from .errors import ConfigError, StoreChangedError, StoreError, StoreMismatchError, SupsupError
from .nets import NetConfig
from .store_header import (
    BLOB_LENGTH_BYTES,
    MAX_LOG_ROWS,
    MAX_TASKS,
    PACKED_VERSION,
    RECORD_BYTES,
    ROW_MAP_VERSION,
    SLOT_ARRAYS,
    HopfieldState,
    PackedState,
    StoreHeader,
    TaskRecord,
    _is_int,
    _slot_digest,
    hopfield_checksum,
    mask_checksum,
)
from .supermask import check_rule

ATTRIBUTE_KEY: Final = "supsup"
CREATING_KEY: Final = "supsup_creating"
TASK_ROWS_CHUNK: Final = 65_536  # entries per chunk of the task -> row table
LOG_BYTES: Final = 1024  # one audit log row: UTF-8 JSON, zero padded
LOG_CHUNK_ROWS: Final = 256
LOCK_NAME: Final = ".supsup.lock"
LOCK_TIMEOUT_SECONDS: Final = float(os.environ.get("SUPSUP_LOCK_TIMEOUT", "600"))
MAX_ROWS: Final = MAX_TASKS + 2  # rows of a per-task array: every task, a replace's, a leftover
VERIFY_ATTEMPTS: Final = 5  # verify runs again when a writer committed during the check
READ_SLAB_BYTES: Final = 1 << 22  # rows read per zarr call: bounds the transient chunk buffers
SlabHook = Callable[[int, np.ndarray], None]  # (first row, rows just read)
ROW_CHUNKED_ARRAYS: Final = ("masks", "records", "task_stats")  # chunks of header.row_chunk rows
MAX_CHECK_THREADS: Final = 8  # sha256 runs at ~2 GB/s a core: more would outrun the reads
# New stores keep this many bytes of rows per chunk of masks, records and task_stats: a store of
# thousands of tasks is a few hundred files, not one per row (an append rewrites one chunk).
ROW_CHUNK_BYTES: Final = 1 << 22
DEFAULT_MAX_ROW_CHUNK: Final = 256
# Zarr stores a chunk whole: zstd keeps the unused rows of the last chunk from costing disk space
# (and squeezes sparse top-k masks a little; dense masks pass through as raw blocks).
MASK_COMPRESSOR: Final = zarr.codecs.ZstdCodec(level=1, checksum=False)

# Reader rule R7: the only codecs that may decode store bytes (no filters, no sharding, no pickle).
CODEC_CHAINS: Final = (("bytes",), ("bytes", "zstd"))
FAULT_ENV: Final = "SUPSUP_FAULT_STEP"
# Points of every write where SUPSUP_FAULT_STEP=<name> SIGKILLs the writer (the killed-writer
# tests); the spec's "Writing" section lists them in order.
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
HOPFIELD_GROUP: Final = "hopfield"
PACKED_ARRAY: Final = "packed"
SUPERSEDED: Final = 1 << 31  # flag in the length word: the raw row was rewritten after packing
# zstd squeezes out the zero padding of rows shorter than the widest; coded bytes do not compress
PACKED_COMPRESSOR: Final = zarr.codecs.ZstdCodec(level=0, checksum=False)


def _zarr_store(
    path: str, writable: bool, limits: storage.ReadLimits | None = None
) -> storage.GuardedStore:
    """A folder's or URL's zarr store, every read bounded by `limits` (storage.py)."""
    return storage.zarr_store(path, writable, limits)


@contextmanager
def _write_lock(path: str) -> Iterator[None]:
    """Exclusive writer lock: fcntl for folders (the kernel releases it if the holder dies, never
    stale), a conditional-write lock object for s3:// (storage.py)."""
    with storage.write_lock(path, LOCK_NAME, LOCK_TIMEOUT_SECONDS):  # clears a killed one's files
        _fault_point("locked")
        yield


@contextmanager
def _copy_source_lock(path: str) -> Iterator[bool]:
    """What a copy holds while it reads its source: the writer lock (True), so that no commit
    lands meanwhile; where none can be taken (a read-only folder or bucket, an http:// URL),
    nothing (False): the copy then checks before its own commit that no commit landed."""
    with ExitStack() as stack:
        try:
            stack.enter_context(_write_lock(path))
            locked = True
        except storage.ReadOnlyLocation:
            locked = False
        yield locked


def _fault_point(step: str) -> None:
    """Fault injection for the killed-writer tests: SIGKILL this process at the named step."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _chunk_limit(header: StoreHeader) -> int:
    """The largest chunk an honest store with this header holds, plus zstd's worst-case growth."""
    largest = max(
        header.row_chunk * header.mask_bytes,
        header.row_chunk * RECORD_BYTES,
        4 * header.mask_bits,
        header.row_chunk * 4 * header.net.stats_size,
        4 * TASK_ROWS_CHUNK,
        LOG_CHUNK_ROWS * LOG_BYTES,
        0 if header.hopfield is None else 4 * header.mask_bits**2,
        0 if header.packed is None else header.packed.width,
    )
    return largest + largest // 512 + 1024


class _CheckedArray(zarr.Array):
    """A store array whose failed reads (truncated or garbled chunks) raise StoreError."""

    def __getitem__(self, selection: Any) -> Any:
        try:
            return super().__getitem__(selection)
        except SupsupError:
            raise
        except Exception as error:
            raise self._unreadable(error) from error

    def get_orthogonal_selection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_orthogonal_selection(*args, **kwargs)
        except SupsupError:
            raise
        except Exception as error:
            raise self._unreadable(error) from error

    def __setitem__(self, selection: Any, value: Any) -> None:
        """A row written into a chunk of many rows reads that chunk first: a damaged one fails
        as a read does (a failed write of the disk itself stays an OSError)."""
        try:
            super().__setitem__(selection, value)
        except (SupsupError, OSError):
            raise
        except Exception as error:
            raise self._unreadable(error) from error

    def _unreadable(self, error: Exception) -> StoreError:
        where = getattr(self.store, "location", "store")
        return StoreError(f"{where}: array '{self.path}' is unreadable ({_one_line(error)})")


def _checked_codecs(array: zarr.Array, name: str, group: zarr.Group) -> _CheckedArray:
    """Reader rule R7: only `bytes` (little-endian), then optionally `zstd`, decode an array."""
    codecs = [codec.to_dict() for codec in array.metadata.codecs]
    names = tuple(codec.get("name") for codec in codecs)
    endian = codecs[0].get("configuration", {}).get("endian", "little") if codecs else None
    if names not in CODEC_CHAINS or endian != "little" or array.metadata.storage_transformers:
        raise StoreError(
            f"array '{name}' uses codecs {list(names)} ({endian}-endian); "
            "allowed: little-endian bytes, then zstd"
        )
    limits = getattr(group.store, "limits", None)
    if "zstd" in names and limits is not None:
        limits.zstd_arrays.add(array.path)
    return _CheckedArray(array._async_array)


class MaskStore:
    """An opened store: its header, task records, masks and per-weight statistics."""

    def __init__(self, path: str, group: zarr.Group, header: StoreHeader) -> None:
        self.path = path
        self._group = group
        self.header = header
        self._arrays = _checked_arrays(group, header)
        # Decoded records of one header (a commit makes a new header): read once, not per call.
        self._records: tuple[StoreHeader, list[TaskRecord]] | None = None

    # -- opening and creating -------------------------------------------------------------
    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether a fully created store is at `path` (creation commits its attributes last)."""
        try:
            store = _zarr_store(storage.normalise(path), writable=False)
            group = zarr.open_group(store, mode="r", zarr_format=3)
        except Exception:
            return False
        return ATTRIBUTE_KEY in group.attrs

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> MaskStore:
        """Open and check a store; any problem is one StoreError naming the path."""
        path = storage.normalise(path)
        if not storage.exists(path):
            raise StoreError(f"{path}: no such store")
        limits = storage.ReadLimits()  # metadata-sized until the header says what chunks hold
        try:
            store = _zarr_store(path, writable, limits)
            group = zarr.open_group(store, mode="r+" if writable else "r", zarr_format=3)
        except SupsupError:
            raise
        except FileNotFoundError as error:  # a folder without zarr.json (or being created)
            raise StoreError(f"{path}: not a readable Zarr v3 group (no zarr.json)") from error
        except Exception as error:
            raise StoreError(
                f"{path}: not a readable Zarr v3 group ({_one_line(error)})"
            ) from error
        if not isinstance(group, zarr.Group):
            raise StoreError(f"{path}: not a Zarr group")
        try:
            header = StoreHeader.from_attrs(group.attrs.get(ATTRIBUTE_KEY))
            limits.chunk_bytes = _chunk_limit(header)
            return cls(path, group, header)
        except StoreError as error:
            raise StoreError(f"{path}: {error}") from error

    @classmethod
    def create(
        cls, path: str | Path, net: NetConfig, rule: str, density: float | None
    ) -> MaskStore:
        """Create an empty store; refuses to overwrite an existing one."""
        path = storage.normalise(path)
        check_rule(rule, density)
        if rule == "sign":
            density = None
        header = StoreHeader(net, rule, density, 0, row_chunk=default_row_chunk(net))
        if storage.is_file(path):
            raise StoreError(f"{path}: exists and is not a directory")
        try:
            with _write_lock(path):
                if cls.exists(path):
                    raise StoreError(f"{path}: a store already exists here")
                _clear_interrupted_creation(path)
                _initialise(path, header)
        except OSError as error:
            raise StoreError(f"{path}: cannot write here ({error.strerror or error})") from error
        return cls.open(path, writable=True)

    @classmethod
    def open_or_create(
        cls, path: str | Path, net: NetConfig, rule: str, density: float | None
    ) -> tuple[MaskStore, bool]:
        """The store at `path`, created if absent, and whether this call created it.

        Writers started together on a new path agree: one creates the store (under the lock),
        the others open it, and each checks that it is the store they trained for.
        """
        if not cls.exists(path):
            try:
                return cls.create(path, net, rule, density), True
            except StoreError:
                if not cls.exists(path):  # failed for another reason than a faster creator
                    raise
        store = cls.open(path, writable=True)
        store.check_compatible(net.arch, net.outputs, net.seed, rule, density)
        return store, False

    @staticmethod
    def check_creatable(path: str | Path) -> None:
        """Fail early (before any training) if a store cannot be made at a local `path`."""
        if storage.is_url(str(path)):
            return  # object stores answer only when written to
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise StoreError(f"{path}: exists and is not a directory")
        if target.is_dir():
            _foreign_or_unfinished(str(target))  # a folder of other files: refused now
        ancestor = target
        while not ancestor.exists():
            ancestor = ancestor.parent
        try:  # a real probe: access() says yes to root where mkdir still fails (/proc, read-only)
            if not ancestor.is_dir():
                raise NotADirectoryError(f"{ancestor} is not a folder")
            os.rmdir(tempfile.mkdtemp(prefix=".supsup-probe-", dir=ancestor))
        except OSError as error:
            raise StoreError(f"{path}: cannot write here ({error.strerror or error})") from error

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
            rows = self._read_rows("records", self._rows())
            self._records = (self.header, self._decode(rows, range(self.task_count)))
        return list(self._records[1])

    def task(self, index: int) -> TaskRecord:
        self._check_index(index)
        row = int(self._rows([index])[0])
        return self._decode(self._arrays["records"][row : row + 1], [index])[0]

    def _decode(self, rows: np.ndarray, indices: Sequence[int]) -> list[TaskRecord]:
        try:
            return TaskRecord.decode_rows(rows, indices, self.header)
        except StoreError as error:
            raise StoreError(f"{self.path}: {error}") from error

    def read_packed(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Packed masks (n, ceil(D/8)) of the given tasks (all by default), checksums checked."""
        indices, rows, records = self._wanted(indices)
        threads = max(1, min(MAX_CHECK_THREADS, torch.get_num_threads()))
        with ThreadPoolExecutor(threads) as hashers:  # hashlib lets go of the GIL: all cores
            checks: list[Future] = []

            def check(start: int, slab: np.ndarray) -> None:  # runs while the next slab is read
                bounds = np.linspace(start, start + len(slab), threads + 1).astype(int)
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                    part = slab[lo - start : hi - start]
                    checks.append(
                        hashers.submit(self._check_masks, part, indices[lo:hi], records[lo:hi])
                    )

            packed = self._mask_rows(rows, check)
            for done in checks:
                done.result()
        return packed

    def _wanted(
        self, indices: Sequence[int] | None
    ) -> tuple[list[int], np.ndarray, list[TaskRecord]]:
        """The tasks whose masks a read asks for, checked: their rows and records."""
        indices = list(range(self.task_count)) if indices is None else list(indices)
        for index in indices:
            self._check_index(index)
        dropped = sorted(set(indices) & set(self.dropped_tasks()))
        if dropped:
            raise StoreError(
                f"{self.path}: the masks of task(s) {dropped} were dropped by "
                "`hopfield-encode --drop-masks`; only Hopfield recovery can use them"
            )
        rows = self._rows(indices)
        if self._records is not None and self._records[0] is self.header:
            records = [self._records[1][i] for i in indices]  # already read by tasks()
        else:  # only the wanted ones: O(n), not O(k)
            records = self._decode(self._read_rows("records", rows), indices)
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
        per_block, chunk = max(1, READ_SLAB_BYTES // self.header.mask_bytes), self.header.row_chunk
        if per_block >= chunk:  # whole chunks per block: none is read twice
            per_block = per_block // chunk * chunk
        blocks = [indices[start : start + per_block] for start in range(0, len(indices), per_block)]

        def unchecked(block: list[int]) -> tuple[np.ndarray, list[int], list[TaskRecord]]:
            wanted, rows, records = self._wanted(block)
            return self._mask_rows(rows), wanted, records

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
        """uint32 (D,): how many committed tasks keep each weight (the mean mask times k)."""
        return self._read_slot("mask_counts")

    def score_mean(self) -> torch.Tensor | None:
        """Mean raw scores of the committed tasks (for --transfer); None for an empty store."""
        if self.task_count == 0:
            return None
        total = self._read_slot("score_sum")
        return torch.from_numpy(total / np.float32(self.task_count))

    def _read_slot(self, name: str) -> np.ndarray:
        """The current row of mask_counts or score_sum, checked against the header's sha256:
        a damaged row, or one rewritten by two commits since this store was opened, is refused."""
        row = self._arrays[name][self.header.slot]
        if self.header.slots is not None:
            if _slot_digest(row, name) != self.header.slots[list(SLOT_ARRAYS).index(name)]:
                raise StoreError(
                    f"{self.path}: {name} does not match its sha256 (damaged, or rewritten by "
                    "writers while this was reading; run again)"
                )
        return row

    def stored_bytes(self) -> int:
        """Bytes of all files of the store on disk."""
        return storage.stored_bytes(self.path)

    def verify(self) -> list[str]:
        """Full check (reader rule R9): records, checksums, padding bits, counts. [] if sound.

        A writer may commit while this reads; a check that failed then is run again on the new
        commit (a few times), so a store appended to concurrently is not reported as damaged.
        """
        for _ in range(VERIFY_ATTEMPTS):
            problems = self._verify_once()
            if not problems or MaskStore.open(self.path).header == self.header:
                return problems
            self.__dict__.update(MaskStore.open(self.path).__dict__)
        return problems

    def _verify_once(self) -> list[str]:
        problems: list[str] = []
        total = np.zeros(self.header.mask_bits, dtype=np.uint64)
        hopfield = self.header.hopfield
        encoded_kept = np.zeros(self.header.mask_bits, dtype=np.int64)
        try:
            rows = self._rows()
        except StoreError as error:
            return [str(error)]
        try:  # one pass decodes a chain of packed rows once; a failure is then named per task
            stored: np.ndarray | None = self._mask_rows(rows)
        except StoreError:
            stored = None
        for index in range(self.task_count):
            try:
                record = self.task(index)
            except StoreError as error:
                problems.append(str(error))
                continue
            if index in self.dropped_tasks():  # no mask bytes to check; R10 accounts for them
                continue
            try:
                packed = (
                    stored[index]
                    if stored is not None
                    else self._mask_rows(rows[index : index + 1])[0]
                )
            except StoreError as error:
                problems.append(f"task {index}: {error}")
                continue
            if mask_checksum(packed) != record.sha256:
                problems.append(f"task {index}: mask bytes do not match their sha256")
                continue
            if not padding_is_zero(packed, self.header.mask_bits):
                problems.append(f"task {index}: padding bits of the last mask byte are not zero")
            bits = unpack_mask(packed, self.header.mask_bits)
            total += bits
            if hopfield is not None and index in hopfield.tasks:
                encoded_kept += bits
        if hopfield is not None:
            dropped_bits = self._verify_hopfield(encoded_kept, problems)
            total += dropped_bits.astype(np.uint64)
        if self.header.packed is not None and not self.header.packed.dropped:
            problems += self._verify_blobs(rows)
        if "task_stats" in self._arrays:
            stats = self._read_rows("task_stats", rows)
            if not np.all(np.isfinite(stats)):
                problems.append("task_stats holds non-finite values")
        try:
            if not problems and not np.array_equal(total, self.mask_counts()):
                problems.append("mask_counts disagree with the sum of the committed masks")
        except StoreError as error:
            problems.append(str(error))
        try:
            if not np.all(np.isfinite(self._read_slot("score_sum"))):
                problems.append("score_sum holds non-finite values")
        except StoreError as error:
            problems.append(str(error))
        try:
            self.read_log()
        except StoreError as error:
            problems.append(str(error))
        return problems

    # -- rows: where a task's mask and record live (version 2: through the task_rows table) ---
    def _rows(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Rows of `masks` and `records` that hold the given tasks (all by default), int64."""
        if self.header.version == 1:
            table = np.arange(self.task_count, dtype=np.int64)
        else:
            rows = self._arrays["task_rows"][self.header.slot, : self.task_count]
            table = rows.astype(np.int64)
            if table.size and (
                table.max() >= self.header.rows or np.unique(table).size != table.size
            ):
                raise StoreError(
                    f"{self.path}: task_rows must map the tasks to distinct rows "
                    f"< {self.header.rows}"
                )
        return table if indices is None else table[np.asarray(indices, dtype=np.int64)]

    def _read_rows(
        self, name: str, rows: np.ndarray, on_slab: SlabHook | None = None
    ) -> np.ndarray:
        """Rows of a per-row array, in the given order, read in slabs of about READ_SLAB_BYTES
        into one output: zarr's per-chunk buffers never hold more than one slab at a time.
        `on_slab(start, slab)` is given each slab as soon as it is in the output."""
        array = self._arrays[name]
        out = np.empty((rows.size, array.shape[1]), dtype=array.dtype)
        chunk = array.chunks[0]  # whole chunks per slab: none is fetched twice
        step = max(1, READ_SLAB_BYTES // max(1, array.shape[1] * array.dtype.itemsize))
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

    def _mask_rows(self, rows: np.ndarray, on_slab: SlabHook | None = None) -> np.ndarray:
        """Mask bytes (n, B) of the given rows: raw, or decoded from their blobs (pack.py) where
        the raw rows were dropped (reader rule R12); `on_slab` as in _read_rows."""
        state = self.header.packed
        if state is None or not state.dropped:
            return self._read_rows("masks", rows, on_slab)
        blobs, superseded = self._blobs(rows)
        coded = np.array([int(r) in blobs and int(r) not in superseded for r in rows], dtype=bool)
        out = np.empty((rows.size, self.header.mask_bytes), dtype=np.uint8)
        if not coded.all():
            out[~coded] = self._read_rows("masks", rows[~coded])
        if coded.any():
            sites = [math.prod(shape) for shape in self.net.mask_shapes]
            codec = pack.get_codec(state.codec)
            out[coded] = pack.decode_packed(codec, blobs, sites, rows[coded].tolist())
        if on_slab is not None:
            on_slab(0, out)
        return out

    def _blobs(self, rows: np.ndarray) -> tuple[dict[int, bytes], set[int]]:
        """The non-empty blobs of the given rows (context codecs: of every row up to the last),
        and which of them a later raw row superseded (still the context of the next blob)."""
        state = self.header.packed
        wanted = rows[rows < state.rows]
        if pack.get_codec(state.codec).uses_previous and wanted.size:
            wanted = np.arange(int(wanted.max()) + 1)
        blobs, superseded = {}, set()
        for row, framed in zip(wanted, self._read_rows(PACKED_ARRAY, wanted), strict=True):
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

    def _verify_blobs(self, rows: np.ndarray) -> list[str]:
        """Blobs kept beside raw rows must decode to those rows (R12 in `verify`)."""
        dropped = set(self.dropped_tasks())
        kept = [task for task in range(self.task_count) if task not in dropped]
        try:
            blobs, superseded = self._blobs(rows[kept])
            mine = [t for t in kept if int(rows[t]) in blobs and int(rows[t]) not in superseded]
            sites = [math.prod(shape) for shape in self.net.mask_shapes]
            codec = pack.get_codec(self.header.packed.codec)
            decoded = pack.decode_packed(codec, blobs, sites, rows[mine].tolist())
        except StoreError as error:
            return [f"packed masks: {error}"]
        raw = self._read_rows("masks", rows[mine])
        return [
            f"task {task}: packed mask does not match the raw mask"
            for task, ours, theirs in zip(mine, decoded, raw, strict=True)
            if not np.array_equal(ours, theirs)
        ]

    def _free_row(self) -> int:
        """Where the next mask goes: the row a replace left unused, else a new row at the end."""
        if self.header.version == 1:
            return self.task_count
        used = np.zeros(self.header.rows, dtype=bool)
        used[self._rows()] = True
        free = np.flatnonzero(~used)
        return int(free[0]) if free.size else self.header.rows

    # -- the audit log (rows written by `supsup allocate`; JSON objects, see the spec) ----------
    def read_log(self) -> list[dict[str, Any]]:
        """The committed audit log rows, oldest first."""
        count = self.header.log_count
        if count == 0:
            return []
        rows = []
        for position, row in enumerate(self._arrays["log"][:count]):
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

    # -- per-task statistics and the Hopfield energy (hopfield.py computes, this keeps bytes) ---
    def read_task_stats(self, index: int) -> torch.Tensor:
        """One task's BatchNorm statistics, float32 (stats_size,), for nets that keep them."""
        self._check_index(index)
        if "task_stats" not in self._arrays:
            raise StoreError(f"{self.path}: {self.net.arch} keeps no per-task statistics")
        row = self._arrays["task_stats"][int(self._rows([index])[0])]
        if not np.all(np.isfinite(row)):
            raise StoreError(f"{self.path}: task {index}: statistics hold non-finite values")
        return torch.from_numpy(np.ascontiguousarray(row, dtype=np.float32))

    def dropped_tasks(self) -> tuple[int, ...]:
        """Tasks whose mask rows were dropped after Hopfield encoding (only Psi holds them)."""
        return () if self.header.hopfield is None else self.header.hopfield.dropped

    def read_hopfield(self) -> tuple[np.ndarray, np.ndarray]:
        """Psi float32 (d, d) and the sum of the encoded +-1 patterns int32 (d,), checksummed."""
        state = self.header.hopfield
        if state is None:
            raise StoreError(f"{self.path}: no task is Hopfield-encoded (run hopfield-encode)")
        psi, pattern_sum = (array[...] for array in self._hopfield_arrays(state))
        if hopfield_checksum(psi, pattern_sum) != state.sha256:
            raise StoreError(f"{self.path}: the Hopfield matrix does not match its sha256")
        return psi, pattern_sum

    def commit_hopfield(
        self,
        psi: np.ndarray,
        pattern_sum: np.ndarray,
        tasks: Sequence[int],
        based_on: int,
    ) -> HopfieldState:
        """Write Psi as a new generation aside, then commit the header pointing at it.

        `based_on` is the generation the caller updated (0: none); if another writer committed
        since, nothing is written and the caller must start again from the new Psi.
        """
        d = self.header.mask_bits
        psi = np.ascontiguousarray(psi, dtype=np.float32)
        pattern_sum = np.ascontiguousarray(pattern_sum, dtype=np.int32)
        if psi.shape != (d, d) or pattern_sum.shape != (d,):
            raise StoreMismatchError(f"Psi must be ({d}, {d}) and the pattern sum ({d},)")
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)
            current = fresh.header.hopfield
            if (0 if current is None else current.generation) != based_on:
                raise StoreError(
                    f"{self.path}: another writer changed the Hopfield matrix meanwhile; run again"
                )
            state = HopfieldState(
                based_on + 1,
                tuple(int(t) for t in tasks),
                () if current is None else current.dropped,
                hopfield_checksum(psi, pattern_sum),
            )
            HopfieldState.from_attrs(state.to_attrs(), d, fresh.task_count)  # same checks as R10
            root = fresh._hopfield_root()
            for stale in [name for name in root.group_keys() if name != f"g{based_on}"]:
                del root[stale]  # left by a writer killed before its commit
            generation = root.create_group(f"g{state.generation}")
            generation.create_array(
                "psi", shape=(d, d), chunks=(d, d), dtype="float32", compressors=None
            )[...] = psi
            generation.create_array(
                "pattern_sum", shape=(d,), chunks=(d,), dtype="int32", compressors=None
            )[...] = pattern_sum
            fresh._commit_header(replace(fresh.header, hopfield=state))
            if f"g{based_on}" in root.group_keys():
                del root[f"g{based_on}"]
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        return state

    def drop_masks(self, tasks: Sequence[int]) -> HopfieldState:
        """Mark encoded tasks' masks dropped (the commit), then clear their mask rows."""
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)
            current = fresh.header.hopfield
            missing = sorted(set(tasks) - set(() if current is None else current.tasks))
            if current is None or missing:
                raise StoreError(
                    f"{self.path}: only Hopfield-encoded tasks can drop their masks"
                    + (f" (not encoded: {missing})" if missing else "")
                )
            added = tuple(t for t in current.tasks if t in set(tasks) - set(current.dropped))
            state = replace(current, dropped=current.dropped + added)
            fresh._commit_header(replace(fresh.header, hopfield=state))
            empty = np.zeros(fresh.header.mask_bytes, dtype=np.uint8)
            for index in state.dropped:  # also finishes a drop interrupted after its commit
                row = int(fresh._rows([index])[0])
                fresh._arrays["masks"][row] = empty  # equals the fill value: the chunk is removed
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        return state

    def _hopfield_root(self) -> zarr.Group:
        if HOPFIELD_GROUP not in self._group:
            return self._group.create_group(HOPFIELD_GROUP)
        return self._group[HOPFIELD_GROUP]

    def _hopfield_arrays(self, state: HopfieldState) -> tuple[zarr.Array, zarr.Array]:
        """Reader rule R11: Psi and the pattern sum of the committed generation, shapes checked."""
        d, name = self.header.mask_bits, f"{HOPFIELD_GROUP}/g{state.generation}"
        expected = {"psi": ("float32", (d, d)), "pattern_sum": ("int32", (d,))}
        arrays = []
        for key, (dtype, shape) in expected.items():
            try:
                array = self._group[f"{name}/{key}"]
            except Exception as error:
                raise StoreError(
                    f"{self.path}: Hopfield array '{name}/{key}' is missing ({_one_line(error)})"
                ) from error
            if (
                not isinstance(array, zarr.Array)
                or str(array.dtype) != dtype
                or array.shape != shape
                or tuple(array.chunks) != shape
            ):
                raise StoreError(
                    f"{self.path}: Hopfield array '{name}/{key}' must be {dtype} {shape}, one chunk"
                )
            arrays.append(_checked_codecs(array, f"{name}/{key}", self._group))
        return arrays[0], arrays[1]

    def _verify_hopfield(self, encoded_kept: np.ndarray, problems: list[str]) -> np.ndarray:
        """Check Psi (R10, R11, checksum, finite, symmetric) and the pattern sum; return the
        per-weight count of the dropped masks, which the pattern sum determines."""
        state = self.header.hopfield
        none = np.zeros(self.header.mask_bits, dtype=np.int64)
        try:
            psi, pattern_sum = self.read_hopfield()
        except StoreError as error:
            problems.append(str(error))
            return none
        if not np.all(np.isfinite(psi)) or not np.array_equal(psi, psi.T):
            problems.append("the Hopfield matrix is not finite and symmetric")
        encoded_ones = pattern_sum.astype(np.int64) + len(state.tasks)  # 2 x (ones of the masks)
        if np.any(encoded_ones % 2) or np.any(encoded_ones < 0):
            problems.append("the Hopfield pattern sum is not a sum of +-1 patterns")
            return none
        dropped = encoded_ones // 2 - encoded_kept
        if np.any(dropped < 0) or np.any(dropped > len(state.dropped)):
            problems.append("the Hopfield pattern sum disagrees with the kept masks")
            return none
        return dropped

    # -- writing ------------------------------------------------------------------------------
    def append_task(
        self,
        mask_bits: np.ndarray,
        scores: torch.Tensor,
        *,
        data: str,
        classes: Sequence[int],
        accuracy: float | None,
        train: dict[str, Any],
        created: str,
        seconds: float | None,
        task_stats: torch.Tensor | None = None,
        log: Sequence[dict[str, Any]] = (),
        expect: StoreHeader | None = None,
    ) -> TaskRecord:
        """Append one task atomically under the writer lock; returns its record.

        `log` rows go to the audit log in the same commit; with `expect` (the header the caller
        last saw) nothing is written if another writer committed since.
        """
        stats_size = self.header.net.stats_size
        stats = None if task_stats is None else task_stats.detach().float().cpu().numpy().ravel()
        if (0 if stats is None else stats.size) != stats_size:
            raise StoreMismatchError(
                f"{0 if stats is None else stats.size} per-task statistics given; the store's "
                f"network keeps {stats_size}"
            )
        bits, packed, flat_scores = self._checked_row(mask_bits, scores)
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)  # another writer may have appended
            fresh._check_expected(expect)
            index = fresh.task_count
            if index >= MAX_TASKS:
                raise StoreError(f"{self.path}: the store holds the maximum of {MAX_TASKS} tasks")
            record = TaskRecord(
                index=index,
                data=data,
                classes=tuple(int(c) for c in classes),
                rule=fresh.header.mask_rule,
                density=fresh.header.density,
                accuracy=accuracy,
                sha256=mask_checksum(packed),
                train=train,
                created=created,
                seconds=seconds,
            )
            row = fresh._free_row()
            fresh._write_task_rows(row, packed, record, stats)
            fresh._commit_tasks(index + 1, {index: row}, bits, flat_scores, log)
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        return record

    def _checked_row(
        self, mask_bits: np.ndarray, scores: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A task's mask as flat bits and packed, and its (D,) scores as float32, checked to be
        sized for this network."""
        bits = np.asarray(mask_bits, dtype=bool).ravel()
        flat = scores.detach().float().cpu().numpy().ravel()
        if bits.size != self.header.mask_bits or flat.size != self.header.mask_bits:
            raise StoreMismatchError(
                f"mask has {bits.size} bits, the store's network has {self.header.mask_bits}"
            )
        return bits, pack_mask(bits), flat

    def replace_task(
        self,
        index: int,
        mask_bits: np.ndarray,
        score_change: torch.Tensor,
        *,
        accuracy: float | None,
        train: dict[str, Any],
        seconds: float | None,
        log: Sequence[dict[str, Any]] = (),
        expect: StoreHeader | None = None,
    ) -> TaskRecord:
        """Replace a task's mask atomically (readers see the old or the new one, never half).

        The new mask and record go to a row no committed task uses; the commit points the task
        at it. The task's record keeps its index, data and creation time, with `revision` + 1.
        `score_change` (D,) is added to the score sum (new raw scores minus those it replaces).
        """
        bits, packed, change = self._checked_row(mask_bits, score_change)
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)
            fresh._check_expected(expect)
            fresh._check_index(index)
            if fresh.net.stats_size:
                raise StoreError(
                    f"{self.path}: {fresh.net.arch} keeps per-task statistics; replacing a "
                    "task's mask is not supported for it"
                )
            hopfield = fresh.header.hopfield
            if hopfield is not None and index in hopfield.tasks:
                raise StoreError(
                    f"{self.path}: task {index} is Hopfield-encoded; replacing its mask would "
                    "leave the energy matrix disagreeing with it"
                )
            old = fresh.task(index)
            old_bits = fresh.read_mask(index)
            record = replace(
                old,
                accuracy=accuracy,
                sha256=mask_checksum(packed),
                train=train,
                seconds=seconds,
                revision=old.revision + 1,
            )
            row = fresh._free_row()
            fresh._write_task_rows(row, packed, record)
            count_change = bits.astype(np.int64) - old_bits
            fresh._commit_tasks(fresh.task_count, {index: row}, count_change, change, log, True)
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        return record

    def pack(
        self,
        codec: str = pack.DEFAULT_CODEC,
        out: str | Path | None = None,
        drop_raw: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> pack.PackReport:
        """Entropy-code every mask row (pack.py; codec `auto`: the smallest) into the `packed`
        array: beside the raw rows in place, or in a new store at `out`, without the raw rows if
        `drop_raw` (version 3)."""
        started = time.perf_counter()
        if codec != pack.AUTO:
            pack.get_codec(codec)  # an unknown name fails before anything is read
        if drop_raw and out is None:
            raise ConfigError("--drop-raw needs --out: raw masks are never dropped in place")
        target = None if out is None else storage.normalise(out)
        if target is not None and storage.exists(target):
            raise StoreError(f"{target}: already exists; choose a new --out path")
        if target is None and self.header.packed is not None and self.header.packed.dropped:
            raise ConfigError(f"{self.path}: its raw masks were dropped; pack it to a new --out")
        source_lock = _write_lock(self.path) if target is None else _copy_source_lock(self.path)
        with source_lock as locked:  # (None in place, where the lock is always held)
            fresh = MaskStore.open(self.path, writable=target is None)
            rows = fresh._rows()
            dropped = set(fresh.dropped_tasks())
            kept = [task for task in range(fresh.task_count) if task not in dropped]
            masks = fresh.read_packed(kept)  # (k, B): decoded if need be, checksums checked
            by_row: list[np.ndarray | None] = [None] * fresh.header.row_count
            for task, mask in zip(kept, masks, strict=True):
                by_row[int(rows[task])] = mask
            sites = [math.prod(shape) for shape in fresh.net.mask_shapes]
            chosen, blobs = pack.encode_store(codec, by_row, sites, progress)
            width = BLOB_LENGTH_BYTES + max((len(blob) for blob in blobs), default=0)
            state = PackedState(chosen.name, len(blobs), width, drop_raw)
            framed = np.zeros((len(blobs), width), dtype=np.uint8)  # (rows, width)
            for row, blob in enumerate(blobs):
                framed[row, :BLOB_LENGTH_BYTES] = np.frombuffer(
                    len(blob).to_bytes(BLOB_LENGTH_BYTES, "little"), dtype=np.uint8
                )
                framed[row, BLOB_LENGTH_BYTES : BLOB_LENGTH_BYTES + len(blob)] = np.frombuffer(
                    blob, dtype=np.uint8
                )
            if target is None:
                fresh._write_packed(state, framed)
            else:
                fresh._copy_packed(target, state, framed, by_row, source_locked=locked)
        written = MaskStore.open(target or self.path)
        if target is None:
            self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        kept_weights = unpack_mask(masks, self.header.mask_bits).sum(axis=1)  # (k,)
        sizes = tuple(
            pack.TaskSize(task, int(ones), len(blobs[int(rows[task])]), self.header.mask_bits)
            for task, ones in zip(kept, kept_weights, strict=True)
        )
        return pack.PackReport(
            written.path,
            chosen.name,
            drop_raw,
            sizes,
            time.perf_counter() - started,
            written.stored_bytes(),
        )

    def _write_packed(self, state: PackedState, framed: np.ndarray) -> None:
        """In place, raw rows kept: forget the old blobs (a commit), write the new, commit them."""
        self._commit_header(replace(self.header, packed=None))
        if PACKED_ARRAY in self._group:
            del self._group[PACKED_ARRAY]
        array = self._group.create_array(
            PACKED_ARRAY,
            shape=framed.shape,
            chunks=(1, state.width),
            dtype="uint8",
            fill_value=0,
            compressors=PACKED_COMPRESSOR,
        )
        if framed.size:
            array[...] = framed
        self._commit_header(replace(self.header, packed=state))

    def copy_to(
        self, target: str | Path, progress: Callable[[int, int], None] | None = None
    ) -> MaskStore:
        """This store, whole, at a new path or URL, in the current layout: masks, records and
        task_stats in chunks of default_row_chunk rows (stores from before `row_chunk` read
        several times faster afterwards). The source is verified and locked while it is read;
        the header is written last, and the copy is verified before it is returned.
        `progress(bytes copied, bytes in all)` is called as the arrays are copied."""
        target = storage.normalise(target)
        self._check_copy_target(target)
        with _copy_source_lock(self.path) as locked:
            source = MaskStore.open(self.path)
            problems = source.verify()
            if problems and not locked:
                source._check_unchanged(None)  # a commit that landed meanwhile, not damage?
            if problems:  # a copy would carry the damage on under a new name
                raise StoreError(f"{self.path}: does not verify, not copied: {problems[0]}")
            rows = default_row_chunk(source.net)
            header = replace(source.header, row_chunk=rows)
            with _write_lock(target):
                dest = _new_group_for_copy(target)
                members = source._members()
                total = sum(m.nbytes for _, m in members if isinstance(m, zarr.Array))
                copied = 0

                def advance(nbytes: int) -> None:
                    nonlocal copied
                    copied += nbytes
                    if progress is not None:
                        progress(copied, total)

                for name, member in members:
                    if isinstance(member, zarr.Group):
                        dest.create_group(name, attributes=member.attrs.asdict())
                        continue
                    layout = None
                    if name in ROW_CHUNKED_ARRAYS:
                        compressors = member.compressors
                        if name == "masks":
                            compressors = _mask_compressors(rows)
                        layout = ((rows, member.shape[1]), compressors)
                    _copy_array(member, dest, name, False, layout, advance)
                _fault_point(COPY_FAULT_STEP)
                source._commit_copy(dest, target, header, locked)
        copy = MaskStore.open(target)
        problems = copy.verify()
        if problems:
            raise StoreError(f"{target}: the copy does not verify: {'; '.join(problems[:3])}")
        return copy

    def _check_copy_target(self, target: str) -> None:
        """Refused before any lock is taken: a store (this one too: its lock would wait on
        itself), a file, or a folder inside this store."""
        if MaskStore.exists(target):
            raise StoreError(f"{target}: a store already exists here; choose a new path")
        if storage.is_file(target):
            raise StoreError(f"{target}: already exists and is not a directory")
        if not storage.is_url(target) and not storage.is_url(self.path):
            inside = Path(target).resolve().is_relative_to(Path(self.path).resolve())
            if inside:
                raise StoreError(f"{target}: is inside the store being copied")

    def _members(self) -> list[tuple[str, zarr.Array | zarr.Group]]:
        """Every array and group of the store, parents first."""
        with warnings.catch_warnings():  # the lock file is no Zarr node: zarr warns
            warnings.filterwarnings("ignore", "Object at .* is not recognized")
            return sorted(self._group.members(max_depth=None), key=lambda m: m[0].count("/"))

    def _copy_packed(
        self,
        target: str,
        state: PackedState,
        framed: np.ndarray,
        by_row: list[np.ndarray | None],
        source_locked: bool,
    ) -> None:
        """A new store at `target`: every array of this one (raw rows restored, or dropped), the
        blobs, then the header last, as creation does (an interrupted copy is no store)."""
        with _write_lock(target):
            dest = _new_group_for_copy(target)
            for name, member in self._members():
                if isinstance(member, zarr.Group):
                    dest.create_group(name, attributes=member.attrs.asdict())
                elif name != PACKED_ARRAY:
                    _copy_array(member, dest, name, skip_data=name == "masks")
            if not state.dropped:  # raw rows restored (a version 3 source had none)
                raw = dest["masks"]
                for row, mask in enumerate(by_row):
                    if mask is not None:
                        raw[row] = mask
            header = replace(self.header, packed=state)
            if state.dropped and header.version == 1:  # version 3 builds on version 2's row map
                table = dest.create_array(
                    "task_rows",
                    shape=(2, -(-max(1, header.task_count) // TASK_ROWS_CHUNK) * TASK_ROWS_CHUNK),
                    chunks=(1, TASK_ROWS_CHUNK),
                    dtype="uint32",
                    fill_value=0,
                )
                table[header.slot, : header.task_count] = np.arange(header.task_count)
                header = replace(header, revision=header.task_count, rows=header.task_count)
            version = PACKED_VERSION if state.dropped else min(header.version, ROW_MAP_VERSION)
            header = replace(header, version=version)
            dest.create_array(
                PACKED_ARRAY,
                shape=framed.shape,
                chunks=(1, state.width),
                dtype="uint8",
                fill_value=0,
                compressors=PACKED_COMPRESSOR,
            )[...] = framed
            self._commit_copy(dest, target, header, source_locked)

    def _commit_copy(
        self, dest: zarr.Group, target: str, header: StoreHeader, source_locked: bool
    ) -> None:
        """Last step of a copy: this store's other attributes and the copy's header (until
        then the copy is no store). A source read without its lock must not have moved."""
        if not source_locked:
            self._check_unchanged(target)
        others = {
            key: value
            for key, value in self._group.attrs.asdict().items()
            if key not in (ATTRIBUTE_KEY, CREATING_KEY)
        }
        storage.confirm_lock(target)
        dest.attrs.put(others | {ATTRIBUTE_KEY: header.to_attrs()})

    def append_log(self, rows: Sequence[dict[str, Any]], expect: StoreHeader | None = None) -> None:
        """Append audit log rows (JSON objects) in one commit."""
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)
            fresh._check_expected(expect)
            fresh._commit_header(replace(fresh.header, log_count=fresh._write_log(rows)))
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)

    def _check_unchanged(self, copy_target: str | None) -> None:
        """For copies read without the source's lock: refuse when a writer committed since this
        store was opened (what was read may mix two states); the unfinished copy is removed."""
        if MaskStore.open(self.path).header == self.header:
            return
        if copy_target is not None:
            _clear_interrupted_creation(copy_target)
        raise StoreChangedError(
            f"{self.path}: a writer changed the store while it was read for a copy (no lock "
            "can be taken there); nothing was written; run the copy again"
        )

    def _check_expected(self, expect: StoreHeader | None) -> None:
        if expect is not None and self.header != expect:
            raise StoreChangedError(
                f"{self.path}: another writer changed the store meanwhile; nothing was written"
            )

    def _commit_tasks(
        self,
        task_count: int,
        moved: dict[int, int],
        count_change: np.ndarray,
        score_change: np.ndarray,
        log: Sequence[dict[str, Any]] = (),
        row_map: bool = False,
    ) -> None:
        """Write the next slot of the per-weight statistics (and, with a row map, of task_rows),
        the log rows, then commit: the slot flips with the commit, so readers never see half."""
        header, arrays = self.header, self._arrays
        following = 1 - header.slot
        counts = self._read_slot("mask_counts").astype(np.int64) + count_change  # (D,)
        arrays["mask_counts"][following] = counts.astype(np.uint32)
        arrays["score_sum"][following] = self._read_slot("score_sum") + score_change
        new = replace(header, task_count=task_count, log_count=self._write_log(log))
        if row_map or header.version >= ROW_MAP_VERSION:
            table = np.zeros(task_count, dtype=np.int64)
            table[: self.task_count] = self._rows()
            for task, row in moved.items():
                table[task] = row
            self._row_table(task_count)[following, :task_count] = table.astype(np.uint32)
            new = replace(
                new,
                version=max(header.version, ROW_MAP_VERSION),
                revision=header.commit_count + 1,
                rows=max(header.row_count, int(table.max()) + 1),
            )
        self._commit_header(new)

    def _row_table(self, task_count: int) -> zarr.Array:
        """The task_rows array: made by the first replace, grown in whole chunks."""
        if "task_rows" not in self._arrays:
            if "task_rows" in self._group:  # left by a writer killed before its commit
                del self._group["task_rows"]
            self._arrays["task_rows"] = self._group.create_array(
                "task_rows",
                shape=(2, TASK_ROWS_CHUNK),
                chunks=(1, TASK_ROWS_CHUNK),
                dtype="uint32",
                fill_value=0,
            )
        table = self._arrays["task_rows"]
        if table.shape[1] < task_count:
            table.resize((2, -(-task_count // TASK_ROWS_CHUNK) * TASK_ROWS_CHUNK))
        return table

    def _write_log(self, rows: Sequence[dict[str, Any]]) -> int:
        """Write audit rows past the committed ones; returns the log count to commit."""
        count = self.header.log_count
        if not rows:
            return count
        end = count + len(rows)
        if end > MAX_LOG_ROWS:
            raise StoreError(f"{self.path}: the audit log holds the maximum of {MAX_LOG_ROWS} rows")
        encoded = np.stack([_encode_log_row(row) for row in rows])  # (n, LOG_BYTES)
        if "log" not in self._arrays:
            self._arrays["log"] = self._group.create_array(
                "log",
                shape=(0, LOG_BYTES),
                chunks=(LOG_CHUNK_ROWS, LOG_BYTES),
                dtype="uint8",
                fill_value=0,
            )
        log = self._arrays["log"]
        if log.shape[0] < end:
            log.resize((end, LOG_BYTES))
        log[count:end] = encoded
        return end

    def _write_task_rows(
        self, index: int, packed: np.ndarray, record: TaskRecord, stats: np.ndarray | None = None
    ) -> None:
        for name in ROW_CHUNKED_ARRAYS:
            if name in self._arrays and self._arrays[name].shape[0] <= index:
                self._arrays[name].resize((index + 1, self._arrays[name].shape[1]))
        if self.header.packed is not None and index < self.header.packed.rows:
            # Flag the row's blob superseded: it must not shadow the new raw row, and it stays
            # because a context codec decodes the next blob from it.
            framed = self._arrays[PACKED_ARRAY][index]
            word = int.from_bytes(framed[:BLOB_LENGTH_BYTES].tobytes(), "little")
            if word:
                flagged = (word | SUPERSEDED).to_bytes(BLOB_LENGTH_BYTES, "little")
                framed[:BLOB_LENGTH_BYTES] = np.frombuffer(flagged, dtype=np.uint8)
                self._arrays[PACKED_ARRAY][index] = framed
        self._arrays["masks"][index] = packed
        _fault_point("mask-row")
        self._arrays["records"][index] = record.encode()
        _fault_point("record-row")
        if stats is not None:
            self._arrays["task_stats"][index] = stats

    def _commit(self, task_count: int) -> None:
        self._commit_header(replace(self.header, task_count=task_count))

    def _commit_header(self, header: StoreHeader) -> None:
        """The one atomic write that makes everything written before it part of the store."""
        if header.slots is None or header.commit_count != self.header.commit_count:
            # The slot flips with this commit: digest the rows it makes current (writers build
            # them from the checked current rows, so a damaged row is never blessed here).
            digests = [_slot_digest(self._arrays[n][header.slot], n) for n in SLOT_ARRAYS]
            header = replace(header, slots=(digests[0], digests[1]))
        _fault_point("before-commit")
        storage.confirm_lock(self.path)  # an object-store writer overtaken after its lease stops
        self._group.attrs[ATTRIBUTE_KEY] = header.to_attrs()
        self.header = header
        _fault_point("committed")

    def _check_index(self, index: int) -> None:
        if not _is_int(index) or not 0 <= index < self.task_count:
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
    ) -> None:
        """Refuse creation options that contradict the existing store (None means 'not given')."""
        wanted = {
            "arch": arch,
            "outputs": outputs,
            "seed": seed,
            "mask-rule": mask_rule,
            "density": density,
        }
        have = {
            "arch": self.net.arch,
            "outputs": self.net.outputs,
            "seed": self.net.seed,
            "mask-rule": self.header.mask_rule,
            "density": self.header.density,
        }
        for name, value in wanted.items():
            if value is not None and value != have[name]:
                raise StoreMismatchError(
                    f"{self.path}: --{name} {value} contradicts the store, made with --{name} "
                    f"{have[name]} (creation options apply to new stores only)"
                )


def _clear_interrupted_creation(path: str) -> None:
    """Remove what a creator killed mid-way left; refuse a folder that holds anything else."""
    leftovers = _foreign_or_unfinished(path)
    for leftover in leftovers:
        storage.remove(path, leftover)


def _foreign_or_unfinished(path: str) -> list[str]:
    """What a new store would replace at `path`: nothing, or an unfinished creation's entries;
    a folder holding anything else is refused (never delete what supsup did not write)."""
    leftovers = storage.entries(path, ignore=LOCK_NAME)
    if not leftovers:
        return []
    try:
        group = zarr.open_group(_zarr_store(path, False), mode="r", zarr_format=3)
        attrs = group.attrs.asdict()
    except Exception:
        attrs = {}
    if attrs.get(CREATING_KEY) is not True:
        raise StoreError(f"{path}: the folder is not empty and holds no supsup store")
    return leftovers


def _mask_compressors(row_chunk: int) -> tuple[zarr.abc.codec.BytesBytesCodec, ...]:
    """zstd for chunks of many masks (the last chunk's unused rows cost no disk), none for one."""
    return (MASK_COMPRESSOR,) if row_chunk > 1 else ()


def default_row_chunk(net: NetConfig) -> int:
    """Rows per chunk for a new store: about ROW_CHUNK_BYTES of its widest per-task row."""
    widest = max(packed_bytes(net.mask_bits), RECORD_BYTES, 4 * net.stats_size)
    return max(1, min(DEFAULT_MAX_ROW_CHUNK, ROW_CHUNK_BYTES // widest))


def _initialise(path: str, header: StoreHeader) -> None:
    """Mark the group as being created, write the arrays, then the header last (the commit)."""
    group = zarr.create_group(_zarr_store(path, True), attributes={CREATING_KEY: True})
    _fault_point("create-marked")
    bits, nbytes, rows = header.mask_bits, header.mask_bytes, header.row_chunk
    group.create_array(
        "masks",
        shape=(0, nbytes),
        chunks=(rows, nbytes),
        dtype="uint8",
        compressors=_mask_compressors(rows),
    )
    group.create_array(
        "records",
        shape=(0, RECORD_BYTES),
        chunks=(rows, RECORD_BYTES),
        dtype="uint8",
        fill_value=0,
    )
    group.create_array(
        "mask_counts", shape=(2, bits), chunks=(1, bits), dtype="uint32", fill_value=0
    )
    group.create_array(
        "score_sum", shape=(2, bits), chunks=(1, bits), dtype="float32", fill_value=0
    )
    if header.net.stats_size:
        stats = header.net.stats_size
        group.create_array(
            "task_stats", shape=(0, stats), chunks=(rows, stats), dtype="float32", fill_value=0
        )
    _fault_point("create-arrays")
    zeros = [_slot_digest(np.zeros(bits), name) for name in SLOT_ARRAYS]  # empty slots
    storage.confirm_lock(path)
    group.attrs.put({ATTRIBUTE_KEY: replace(header, slots=(zeros[0], zeros[1])).to_attrs()})


def _checked_arrays(group: zarr.Group, header: StoreHeader) -> dict[str, zarr.Array]:
    """Reader rule R7: every array present with the dtype, shape and chunks the header implies."""
    count, bits, nbytes = header.task_count, header.mask_bits, header.mask_bytes
    rows = header.row_chunk
    expected = {
        "masks": ("uint8", nbytes, (rows, nbytes)),
        "records": ("uint8", RECORD_BYTES, (rows, RECORD_BYTES)),
        "mask_counts": ("uint32", bits, (1, bits)),
        "score_sum": ("float32", bits, (1, bits)),
    }
    if header.net.stats_size:
        stats = header.net.stats_size
        expected["task_stats"] = ("float32", stats, (rows, stats))
    arrays = {}
    for name, (dtype, width, chunks) in expected.items():
        try:
            array = group[name]
        except Exception as error:
            raise StoreError(
                f"array '{name}' is missing or unreadable ({_one_line(error)})"
            ) from error
        if not isinstance(array, zarr.Array) or array.ndim != 2:
            raise StoreError(f"'{name}' is not a 2-D array")
        if str(array.dtype) != dtype:
            raise StoreError(f"array '{name}' has dtype {array.dtype}, expected {dtype}")
        rows_needed = 2 if name in ("mask_counts", "score_sum") else header.row_count
        if array.shape[1] != width or array.shape[0] < rows_needed:
            raise StoreError(
                f"array '{name}' has shape {array.shape}, "
                f"expected at least ({rows_needed}, {width})"
            )
        if array.shape[0] > MAX_ROWS:  # zarr's row selections allocate memory per row chunk
            raise StoreError(f"array '{name}' claims {array.shape[0]:,} rows; at most {MAX_ROWS:,}")
        if tuple(array.chunks) != chunks:
            raise StoreError(f"array '{name}' has chunks {array.chunks}, expected {chunks}")
        arrays[name] = _checked_codecs(array, name, group)
    if header.version >= ROW_MAP_VERSION:
        arrays["task_rows"] = _checked_extra(
            group, "task_rows", "uint32", (2, count), (1, TASK_ROWS_CHUNK)
        )
    if header.log_count or "log" in group:
        arrays["log"] = _checked_extra(
            group, "log", "uint8", (header.log_count, LOG_BYTES), (LOG_CHUNK_ROWS, LOG_BYTES)
        )
    if header.packed is not None:
        width = header.packed.width
        arrays[PACKED_ARRAY] = _checked_extra(
            group, PACKED_ARRAY, "uint8", (header.packed.rows, width), (1, width)
        )
    return arrays


def _checked_extra(
    group: zarr.Group,
    name: str,
    dtype: str,
    least: tuple[int, int],
    chunks: tuple[int, int],
) -> zarr.Array:
    """R7 for `task_rows` (version 2) and `log`: dtype, chunks, and at least the rows and columns
    the header needs (the width of `task_rows` and the rows of `log` grow in whole chunks)."""
    try:
        array = group[name]
    except Exception as error:
        raise StoreError(f"array '{name}' is missing or unreadable ({_one_line(error)})") from error
    if not isinstance(array, zarr.Array) or array.ndim != 2 or str(array.dtype) != dtype:
        raise StoreError(f"'{name}' must be a 2-D {dtype} array")
    fixed = 0 if name == "task_rows" else 1  # the axis whose size the format fixes
    if array.shape[fixed] != least[fixed] or array.shape[1 - fixed] < least[1 - fixed]:
        raise StoreError(f"array '{name}' has shape {array.shape}, expected at least {least}")
    if tuple(array.chunks) != chunks:
        raise StoreError(f"array '{name}' has chunks {array.chunks}, expected {chunks}")
    return _checked_codecs(array, name, group)


def _new_group_for_copy(target: str) -> zarr.Group:
    """Under the target's lock: a new group marked as being created, where no store is."""
    if MaskStore.exists(target):
        raise StoreError(f"{target}: already exists; choose a new path")
    _clear_interrupted_creation(target)
    return zarr.create_group(_zarr_store(target, True), attributes={CREATING_KEY: True})


def _copy_array(
    array: zarr.Array,
    dest: zarr.Group,
    name: str,
    skip_data: bool,
    layout: tuple[tuple[int, ...], Any] | None = None,
    copied: Callable[[int], None] = lambda nbytes: None,
) -> None:
    """Copy one array's metadata, and its data in slabs of whole chunks (about 64 MiB each);
    `layout` = (chunks, compressors) for the copy instead of the source's; `copied(bytes)`
    after each slab."""
    chunks, compressors = layout or (array.chunks, array.compressors)
    copy = dest.create_array(
        name,
        shape=array.shape,
        chunks=chunks,
        dtype=array.dtype,
        fill_value=array.fill_value,
        compressors=compressors,
        attributes=array.attrs.asdict(),
    )
    if skip_data or array.size == 0:
        return
    if array.ndim == 0:
        copy[...] = array[...]
        copied(array.nbytes)
        return
    rows = math.lcm(array.chunks[0], chunks[0])  # whole chunks of the source and of the copy
    step = rows * max(1, (1 << 26) // max(1, rows * math.prod(chunks[1:]) * array.dtype.itemsize))
    for start in range(0, array.shape[0], step):
        slab = array[start : start + step]
        copy[start : start + step] = slab
        copied(slab.nbytes)


def _encode_log_row(row: dict[str, Any]) -> np.ndarray:
    if not isinstance(row, dict):
        raise StoreError("an audit log row must be a JSON object")
    raw = json.dumps(row, sort_keys=True, allow_nan=False).encode()
    if len(raw) > LOG_BYTES:
        raise StoreError(f"audit log row is {len(raw)} bytes; the limit is {LOG_BYTES}")
    encoded = np.zeros(LOG_BYTES, dtype=np.uint8)
    encoded[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return encoded


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
