"""Where every byte of a store lives: each array's dtype, shape, chunks and codecs, the limits a
reader enforces before reading (reader rule R7 of formats/supsup-store-v1.md), and creation of
the arrays of a new store."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any, Final

import numpy as np
import zarr

from ..errors import StoreError, SupsupError, one_line
from ..format.architectures import NetConfig
from ..format.bits import packed_bytes
from ..format.header import (
    MAX_TASKS,
    RECORD_BYTES,
    ROW_MAP_VERSION,
    SLOT_ARRAYS,
    HopfieldState,
    StoreHeader,
    slot_digest,
)
from . import location
from .faults import fault_point

ATTRIBUTE_KEY: Final = "supsup"
CREATING_KEY: Final = "supsup_creating"
TASK_ROWS_CHUNK: Final = 65_536  # entries per chunk of the task -> row table
LOG_BYTES: Final = 1024  # one audit log row: UTF-8 JSON, zero padded
LOG_CHUNK_ROWS: Final = 256
LOCK_NAME: Final = ".supsup.lock"  # suffix of the lock beside a folder; s3 lock object
LOCK_TIMEOUT_SECONDS: Final = float(os.environ.get("SUPSUP_LOCK_TIMEOUT", "600"))
MAX_ROWS: Final = MAX_TASKS + 2  # rows of a per-task array: every task, a replace's, a leftover
READ_SLAB_BYTES: Final = 1 << 22  # rows read per zarr call: bounds the transient chunk buffers
ROW_CHUNKED_ARRAYS: Final = ("masks", "records", "task_stats")  # chunks of header.row_chunk rows
# New stores keep this many bytes of rows per chunk of masks, records and task_stats: a store of
# thousands of tasks is a few hundred files, not one per row (an append rewrites one chunk).
ROW_CHUNK_BYTES: Final = 1 << 22
DEFAULT_MAX_ROW_CHUNK: Final = 256
# Zarr stores a chunk whole: zstd keeps the unused rows of the last chunk from costing disk space
# (and squeezes sparse top-k masks a little; dense masks pass through as raw blocks).
MASK_COMPRESSOR: Final = zarr.codecs.ZstdCodec(level=1, checksum=False)

# Reader rule R7: the only codecs that may decode store bytes (no filters, no sharding, no pickle).
CODEC_CHAINS: Final = (("bytes",), ("bytes", "zstd"))
HOPFIELD_GROUP: Final = "hopfield"
PACKED_ARRAY: Final = "packed"
SUPERSEDED: Final = 1 << 31  # flag in the length word: the raw row was rewritten after packing
# zstd squeezes out the zero padding of rows shorter than the widest; coded bytes do not compress
PACKED_COMPRESSOR: Final = zarr.codecs.ZstdCodec(level=0, checksum=False)
# Version 4 stores hold mask_counts from the commit that brings them this many tasks: counts of
# k tasks compress to a few bits a weight, small beside the k bits of the masks from here on,
# and spare one-shot inference a pass over every mask before the first product.
STORED_COUNTS_TASKS: Final = 256


def zarr_store(
    path: str, writable: bool, limits: location.ReadLimits | None = None
) -> location.GuardedStore:
    """A folder's or URL's zarr store, every read bounded by `limits` (location.py)."""
    return location.zarr_store(path, writable, limits)


@contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Exclusive writer lock: fcntl for folders (the kernel releases it if the holder dies, never
    stale), a conditional-write lock object for s3:// (location.py)."""
    with location.write_lock(path, LOCK_NAME, LOCK_TIMEOUT_SECONDS):  # clears a killed one's files
        fault_point("locked")
        yield


@contextmanager
def copy_source_lock(path: str) -> Iterator[bool]:
    """What a copy holds while it reads its source: the writer lock (True), so that no commit
    lands meanwhile; where none can be taken (a read-only folder or bucket, an http:// URL),
    nothing (False): the copy then checks before its own commit that no commit landed."""
    with ExitStack() as stack:
        try:
            stack.enter_context(write_lock(path))
            locked = True
        except location.ReadOnlyLocation:
            locked = False
        yield locked


def chunk_limit(header: StoreHeader) -> int:
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


class CheckedArray(zarr.Array):
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
        return StoreError(f"{where}: array '{self.path}' is unreadable ({one_line(error)})")


def checked_codecs(array: zarr.Array, name: str, group: zarr.Group) -> CheckedArray:
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
    return CheckedArray(array._async_array)


def mask_compressors(row_chunk: int) -> tuple[zarr.abc.codec.BytesBytesCodec, ...]:
    """zstd for chunks of many masks (the last chunk's unused rows cost no disk), none for one."""
    return (MASK_COMPRESSOR,) if row_chunk > 1 else ()


def default_row_chunk(net: NetConfig) -> int:
    """Rows per chunk for a new store: about ROW_CHUNK_BYTES of its widest per-task row."""
    widest = max(packed_bytes(net.mask_bits), RECORD_BYTES, 4 * net.stats_size)
    return max(1, min(DEFAULT_MAX_ROW_CHUNK, ROW_CHUNK_BYTES // widest))


def initialise(path: str, header: StoreHeader) -> None:
    """Mark the group as being created, write the arrays, then the header last (the commit).
    Version 4: the per-weight arrays `header.slots` names, and the row map; before: both."""
    group = zarr.create_group(zarr_store(path, True), attributes={CREATING_KEY: True})
    fault_point("create-marked")
    nbytes, rows = header.mask_bytes, header.row_chunk
    group.create_array(
        "masks",
        shape=(0, nbytes),
        chunks=(rows, nbytes),
        dtype="uint8",
        compressors=mask_compressors(rows),
    )
    group.create_array(
        "records",
        shape=(0, RECORD_BYTES),
        chunks=(rows, RECORD_BYTES),
        dtype="uint8",
        fill_value=0,
    )
    for name in header.slot_arrays:
        create_slot_array(group, name, header.mask_bits)
    if header.version >= ROW_MAP_VERSION:
        create_row_table(group)
    if header.net.stats_size:
        stats = header.net.stats_size
        group.create_array(
            "task_stats", shape=(0, stats), chunks=(rows, stats), dtype="float32", fill_value=0
        )
    fault_point("create-arrays")
    zeros = np.zeros(header.mask_bits)  # the empty slots
    slots = tuple((name, slot_digest(zeros, name)) for name in header.slot_arrays)
    location.confirm_lock(path)
    group.attrs.put({ATTRIBUTE_KEY: replace(header, slots=slots).to_attrs()})


def create_slot_array(group: zarr.Group, name: str, bits: int) -> zarr.Array:
    """mask_counts or score_sum: two rows of D, the current one and a writer's scratch."""
    return group.create_array(
        name, shape=(2, bits), chunks=(1, bits), dtype=np.dtype(SLOT_ARRAYS[name]), fill_value=0
    )


def create_row_table(group: zarr.Group, columns: int = TASK_ROWS_CHUNK) -> zarr.Array:
    """task_rows: two rows (slots) mapping each task to its row, grown in whole chunks."""
    return group.create_array(
        "task_rows",
        shape=(2, -(-max(1, columns) // TASK_ROWS_CHUNK) * TASK_ROWS_CHUNK),
        chunks=(1, TASK_ROWS_CHUNK),
        dtype="uint32",
        fill_value=0,
    )


def checked_arrays(group: zarr.Group, header: StoreHeader) -> dict[str, zarr.Array]:
    """Reader rule R7: every array present with the dtype, shape and chunks the header implies."""
    count, bits, nbytes = header.task_count, header.mask_bits, header.mask_bytes
    rows = header.row_chunk
    expected = {
        "masks": ("uint8", nbytes, (rows, nbytes)),
        "records": ("uint8", RECORD_BYTES, (rows, RECORD_BYTES)),
    }
    for name in header.slot_arrays:  # version 4: only those the header names
        expected[name] = (str(np.dtype(SLOT_ARRAYS[name])), bits, (1, bits))
    if header.net.stats_size:
        stats = header.net.stats_size
        expected["task_stats"] = ("float32", stats, (rows, stats))
    arrays = {}
    for name, (dtype, width, chunks) in expected.items():
        try:
            array = group[name]
        except Exception as error:
            raise StoreError(
                f"array '{name}' is missing or unreadable ({one_line(error)})"
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
        arrays[name] = checked_codecs(array, name, group)
    if header.version >= ROW_MAP_VERSION:
        arrays["task_rows"] = checked_extra(
            group, "task_rows", "uint32", (2, count), (1, TASK_ROWS_CHUNK)
        )
    if header.log_count or "log" in group:
        arrays["log"] = checked_extra(
            group, "log", "uint8", (header.log_count, LOG_BYTES), (LOG_CHUNK_ROWS, LOG_BYTES)
        )
    if header.packed is not None:
        width = header.packed.width
        arrays[PACKED_ARRAY] = checked_extra(
            group, PACKED_ARRAY, "uint8", (header.packed.rows, width), (1, width)
        )
    return arrays


def checked_extra(
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
        raise StoreError(f"array '{name}' is missing or unreadable ({one_line(error)})") from error
    if not isinstance(array, zarr.Array) or array.ndim != 2 or str(array.dtype) != dtype:
        raise StoreError(f"'{name}' must be a 2-D {dtype} array")
    fixed = 0 if name == "task_rows" else 1  # the axis whose size the format fixes
    if array.shape[fixed] != least[fixed] or array.shape[1 - fixed] < least[1 - fixed]:
        raise StoreError(f"array '{name}' has shape {array.shape}, expected at least {least}")
    if tuple(array.chunks) != chunks:
        raise StoreError(f"array '{name}' has chunks {array.chunks}, expected {chunks}")
    return checked_codecs(array, name, group)


def encode_log_row(row: dict[str, Any]) -> np.ndarray:
    if not isinstance(row, dict):
        raise StoreError("an audit log row must be a JSON object")
    raw = json.dumps(row, sort_keys=True, allow_nan=False).encode()
    if len(raw) > LOG_BYTES:
        raise StoreError(f"audit log row is {len(raw)} bytes; the limit is {LOG_BYTES}")
    encoded = np.zeros(LOG_BYTES, dtype=np.uint8)
    encoded[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return encoded


def checked_hopfield_arrays(
    group: zarr.Group, header: StoreHeader, state: HopfieldState
) -> tuple[zarr.Array, zarr.Array]:
    """Reader rule R10: Psi and the pattern sum of the committed generation, shapes checked."""
    d, name = header.mask_bits, f"{HOPFIELD_GROUP}/g{state.generation}"
    expected = {"psi": ("float32", (d, d)), "pattern_sum": ("int32", (d,))}
    arrays = []
    for key, (dtype, shape) in expected.items():
        try:
            array = group[f"{name}/{key}"]
        except Exception as error:
            raise StoreError(
                f"Hopfield array '{name}/{key}' is missing ({one_line(error)})"
            ) from error
        if (
            not isinstance(array, zarr.Array)
            or str(array.dtype) != dtype
            or array.shape != shape
            or tuple(array.chunks) != shape
        ):
            raise StoreError(f"Hopfield array '{name}/{key}' must be {dtype} {shape}, one chunk")
        arrays.append(checked_codecs(array, f"{name}/{key}", group))
    return arrays[0], arrays[1]


def write_packed_array(group: zarr.Group, framed: np.ndarray) -> None:
    """The `packed` array of a group: one framed blob per row (length word, blob, zero padding)."""
    array = group.create_array(
        PACKED_ARRAY,
        shape=framed.shape,
        chunks=(1, framed.shape[1]),
        dtype="uint8",
        fill_value=0,
        compressors=PACKED_COMPRESSOR,
    )
    if framed.size:
        array[...] = framed
