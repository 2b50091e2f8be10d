"""Copies of a store: `copy` (the whole store, in the current layout) and `pack` (masks
range-coded, in place or into a new store, raw masks kept or dropped). A copy is written as
creation writes a store: arrays first, header last; the source is verified first."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError, StoreChangedError, StoreError
from ..format import codecs
from ..format.bits import unpack_mask
from ..format.header import (
    BLOB_LENGTH_BYTES,
    LEAN_VERSION,
    PACKED_VERSION,
    ROW_MAP_VERSION,
    SLOT_ARRAYS,
    PackedState,
    StoreHeader,
)
from ..progress import Progress
from . import layout, location
from .faults import COPY_FAULT_STEP, fault_point
from .layout import (
    ATTRIBUTE_KEY,
    CREATING_KEY,
    PACKED_ARRAY,
    ROW_CHUNKED_ARRAYS,
    copy_source_lock,
    create_row_table,
    mask_compressors,
    write_lock,
    zarr_store,
)
from .reader import StoreReader
from .verify import verify
from .writer import Transaction, clear_interrupted_creation


def pack(
    store: StoreReader,
    codec: str = codecs.DEFAULT_CODEC,
    out: str | Path | None = None,
    drop_raw: bool = False,
    progress: Progress | None = None,
) -> codecs.PackReport:
    """Entropy-code every mask row (codecs.py; codec `auto`: the smallest) into the `packed`
    array: beside the raw rows in place, or in a new store at `out`, without the raw rows if
    `drop_raw` (version 3)."""
    started = time.perf_counter()
    if codec != codecs.AUTO:
        codecs.get_codec(codec)  # an unknown name fails before anything is read
    if drop_raw and out is None:
        raise ConfigError("--drop-raw needs --out: raw masks are never dropped in place")
    target = None if out is None else location.normalise(out)
    if target is not None and location.exists(target):
        raise StoreError(f"{target}: already exists; choose a new --out path")
    if target is None and store.header.packed is not None and store.header.packed.dropped:
        raise ConfigError(f"{store.path}: its raw masks were dropped; pack it to a new --out")
    source_lock = write_lock(store.path) if target is None else copy_source_lock(store.path)
    with source_lock as locked:  # (None in place, where the lock is always held)
        fresh = StoreReader.open(store.path, writable=target is None)
        rows = fresh.rows()
        dropped = set(fresh.dropped_tasks())
        kept = [task for task in range(fresh.task_count) if task not in dropped]
        masks = fresh.read_packed(kept)  # (k, B): decoded if need be, checksums checked
        by_row: list[np.ndarray | None] = [None] * fresh.header.row_count
        for task, mask in zip(kept, masks, strict=True):
            by_row[int(rows[task])] = mask
        sites = [math.prod(shape) for shape in fresh.net.mask_shapes]
        chosen, blobs = codecs.encode_store(codec, by_row, sites, progress)
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
            Transaction(fresh).write_packed(state, framed)
        else:
            _copy_packed(fresh, target, state, framed, by_row, source_locked=locked)
    written = StoreReader.open(target or store.path)
    kept_weights = unpack_mask(masks, store.header.mask_bits).sum(axis=1)  # (k,)
    sizes = tuple(
        codecs.TaskSize(task, int(ones), len(blobs[int(rows[task])]), store.header.mask_bits)
        for task, ones in zip(kept, kept_weights, strict=True)
    )
    return codecs.PackReport(
        written.path,
        chosen.name,
        drop_raw,
        sizes,
        time.perf_counter() - started,
        written.stored_bytes(),
    )


def copy_to(
    store: StoreReader, target: str | Path, progress: Progress | None = None
) -> StoreReader:
    """This store, whole, at a new path or URL, in the current layout: masks, records and
    task_stats in chunks of default_row_chunk rows (stores from before `row_chunk` read
    several times faster afterwards). The source is verified and locked while it is read;
    the header is written last, and the copy is verified before it is returned.
    `progress(bytes copied, bytes in all)` is called as the arrays are copied."""
    target = location.normalise(target)
    _check_copy_target(store, target)
    with copy_source_lock(store.path) as locked:
        source = StoreReader.open(store.path)
        problems = verify(source)
        if problems and not locked:
            _check_unchanged(source, None)  # a commit that landed meanwhile, not damage?
        if problems:  # a copy would carry the damage on under a new name
            raise StoreError(f"{store.path}: does not verify, not copied: {problems[0]}")
        rows = layout.default_row_chunk(source.net)
        header = replace(source.header, row_chunk=rows)
        with write_lock(target):
            dest = new_group_for_copy(target)
            members = _members(source)
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
                chunking = None
                if name in ROW_CHUNKED_ARRAYS:
                    compressors = member.compressors
                    if name == "masks":
                        compressors = mask_compressors(rows)
                    chunking = ((rows, member.shape[1]), compressors)
                copy_array(member, dest, name, False, chunking, advance)
            fault_point(COPY_FAULT_STEP)
            _commit_copy(source, dest, target, header, locked)
    copy = StoreReader.open(target)
    problems = verify(copy)
    if problems:
        raise StoreError(f"{target}: the copy does not verify: {'; '.join(problems[:3])}")
    return copy


def _check_copy_target(store: StoreReader, target: str) -> None:
    """Refused before any lock is taken: a store (this one too: its lock would wait on
    itself), a file, or a folder inside this store."""
    if StoreReader.exists(target):
        raise StoreError(f"{target}: a store already exists here; choose a new path")
    if location.is_file(target):
        raise StoreError(f"{target}: already exists and is not a directory")
    if not location.is_url(target) and not location.is_url(store.path):
        inside = Path(target).resolve().is_relative_to(Path(store.path).resolve())
        if inside:
            raise StoreError(f"{target}: is inside the store being copied")


def _members(store: StoreReader) -> list[tuple[str, zarr.Array | zarr.Group]]:
    """Every array and group of the store, parents first; of the per-weight arrays, those
    the header holds (not one a writer killed before its commit left)."""
    with warnings.catch_warnings():  # the lock file is no Zarr node: zarr warns
        warnings.filterwarnings("ignore", "Object at .* is not recognized")
        members = store.group.members(max_depth=None)
    held = store.header.slot_arrays
    kept = [m for m in members if m[0] not in SLOT_ARRAYS or m[0] in held]
    return sorted(kept, key=lambda m: m[0].count("/"))


def _copy_packed(
    store: StoreReader,
    target: str,
    state: PackedState,
    framed: np.ndarray,
    by_row: list[np.ndarray | None],
    source_locked: bool,
) -> None:
    """A new store at `target`: every array of this one (raw rows restored, or dropped), the
    blobs, then the header last, as creation does (an interrupted copy is no store)."""
    with write_lock(target):
        dest = new_group_for_copy(target)
        for name, member in _members(store):
            if isinstance(member, zarr.Group):
                dest.create_group(name, attributes=member.attrs.asdict())
            elif name != PACKED_ARRAY:
                copy_array(member, dest, name, skip_data=name == "masks")
        if not state.dropped:  # raw rows restored (a version 3 source had none)
            raw = dest["masks"]
            for row, mask in enumerate(by_row):
                if mask is not None:
                    raw[row] = mask
        header = replace(store.header, packed=state)
        if state.dropped and header.version == 1:  # version 3 builds on version 2's row map
            table = create_row_table(dest, header.task_count)
            table[header.slot, : header.task_count] = np.arange(header.task_count)
            header = replace(header, revision=header.task_count, rows=header.task_count)
        if header.version < LEAN_VERSION:  # version 4 holds packed masks either way
            version = PACKED_VERSION if state.dropped else min(header.version, ROW_MAP_VERSION)
            header = replace(header, version=version)
        layout.write_packed_array(dest, framed)
        _commit_copy(store, dest, target, header, source_locked)


def _commit_copy(
    store: StoreReader, dest: zarr.Group, target: str, header: StoreHeader, source_locked: bool
) -> None:
    """Last step of a copy: this store's other attributes and the copy's header (until
    then the copy is no store). A source read without its lock must not have moved."""
    if not source_locked:
        _check_unchanged(store, target)
    others = {
        key: value
        for key, value in store.group.attrs.asdict().items()
        if key not in (ATTRIBUTE_KEY, CREATING_KEY)
    }
    location.confirm_lock(target)
    dest.attrs.put(others | {ATTRIBUTE_KEY: header.to_attrs()})


def _check_unchanged(store: StoreReader, copy_target: str | None) -> None:
    """For copies read without the source's lock: refuse when a writer committed since this
    store was opened (what was read may mix two states); the unfinished copy is removed."""
    if StoreReader.open(store.path).header == store.header:
        return
    if copy_target is not None:
        clear_interrupted_creation(copy_target)
    raise StoreChangedError(
        f"{store.path}: a writer changed the store while it was read for a copy (no lock "
        "can be taken there); nothing was written; run the copy again"
    )


def new_group_for_copy(target: str) -> zarr.Group:
    """Under the target's lock: a new group marked as being created, where no store is."""
    if StoreReader.exists(target):
        raise StoreError(f"{target}: already exists; choose a new path")
    clear_interrupted_creation(target)
    return zarr.create_group(zarr_store(target, True), attributes={CREATING_KEY: True})


def copy_array(
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
