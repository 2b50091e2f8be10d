"""Writing a store: creation, then every change through one transaction (take the lock, read the
store again, write rows past what is committed, commit the header last). Readers never see half
a change; a writer killed at any point leaves the store as its last commit."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreChangedError, StoreError, StoreMismatchError
from ..format.architectures import NetConfig
from ..format.bits import pack_mask
from ..format.header import (
    BLOB_LENGTH_BYTES,
    LEAN_VERSION,
    MAX_LOG_ROWS,
    MAX_TASKS,
    ROW_MAP_VERSION,
    SLOT_ARRAYS,
    HopfieldState,
    PackedState,
    StoreHeader,
    TaskRecord,
    hopfield_checksum,
    mask_checksum,
    slot_digest,
)
from ..format.rules import check_er_scale, check_rule
from . import layout, location
from .faults import fault_point
from .layout import (
    ATTRIBUTE_KEY,
    CREATING_KEY,
    HOPFIELD_GROUP,
    LOCK_NAME,
    LOG_BYTES,
    LOG_CHUNK_ROWS,
    PACKED_ARRAY,
    ROW_CHUNKED_ARRAYS,
    SUPERSEDED,
    TASK_ROWS_CHUNK,
    create_row_table,
    create_slot_array,
    encode_log_row,
    initialise,
    write_lock,
    zarr_store,
)
from .reader import StoreReader, summed_counts


class Transaction:
    """One change of a store under its lock: `store` is the store as read under the lock; rows
    go past what is committed, and `commit_header` makes them part of the store."""

    def __init__(self, store: StoreReader) -> None:
        self.store = store

    @property
    def header(self) -> StoreHeader:
        return self.store.header

    def free_row(self) -> int:
        """Where the next mask goes: the row a replace left unused, else a new row at the end."""
        header = self.header
        if header.version == 1:
            return header.task_count
        used = np.zeros(header.rows, dtype=bool)
        used[self.store.rows()] = True
        free = np.flatnonzero(~used)
        return int(free[0]) if free.size else header.rows

    def write_task_rows(
        self, row: int, packed: np.ndarray, record: TaskRecord, stats: np.ndarray | None = None
    ) -> None:
        """A task's mask, record and statistics at `row`, not yet committed."""
        arrays = self.store.arrays
        for name in ROW_CHUNKED_ARRAYS:
            if name in arrays and arrays[name].shape[0] <= row:
                arrays[name].resize((row + 1, arrays[name].shape[1]))
        if self.header.packed is not None and row < self.header.packed.rows:
            # Flag the row's blob superseded: it must not shadow the new raw row, and it stays
            # because a context codec decodes the next blob from it.
            framed = arrays[PACKED_ARRAY][row]
            word = int.from_bytes(framed[:BLOB_LENGTH_BYTES].tobytes(), "little")
            if word:
                flagged = (word | SUPERSEDED).to_bytes(BLOB_LENGTH_BYTES, "little")
                framed[:BLOB_LENGTH_BYTES] = np.frombuffer(flagged, dtype=np.uint8)
                arrays[PACKED_ARRAY][row] = framed
        arrays["masks"][row] = packed
        fault_point("mask-row")
        arrays["records"][row] = record.encode()
        fault_point("record-row")
        if stats is not None:
            arrays["task_stats"][row] = stats

    def commit_tasks(
        self,
        task_count: int,
        moved: dict[int, int],
        count_change: np.ndarray,
        score_change: np.ndarray | None,
        log: Sequence[dict[str, Any]] = (),
        row_map: bool = False,
    ) -> None:
        """Write the next slot of the per-weight arrays the store holds (and, with a row map, of
        task_rows), the log rows, then commit: the slot flips with the commit, so readers never
        see half. A version 4 store gains its counts at the commit that brings it
        STORED_COUNTS_TASKS tasks."""
        store, header = self.store, self.header
        following = 1 - header.slot
        held = header.slot_arrays
        if "mask_counts" in held:
            counts = store.read_slot("mask_counts").astype(np.int64) + count_change  # (D,)
            store.arrays["mask_counts"][following] = counts.astype(np.uint32)
        elif task_count >= layout.STORED_COUNTS_TASKS:
            counts = summed_counts(store).astype(np.int64) + count_change  # (D,)
            self._new_slot_array("mask_counts")[following] = counts.astype(np.uint32)
        if "score_sum" in held:
            if score_change is None:
                raise StoreMismatchError(f"{store.path}: the store sums scores; none were given")
            store.arrays["score_sum"][following] = store.read_slot("score_sum") + score_change
        new = replace(header, task_count=task_count, log_count=self.write_log(log))
        if row_map or header.version >= ROW_MAP_VERSION:
            table = np.zeros(task_count, dtype=np.int64)
            table[: header.task_count] = store.rows()
            for task, row in moved.items():
                table[task] = row
            self._row_table(task_count)[following, :task_count] = table.astype(np.uint32)
            new = replace(
                new,
                version=max(header.version, ROW_MAP_VERSION),
                revision=header.commit_count + 1,
                rows=max(header.row_count, int(table.max()) + 1),
            )
        self.commit_header(new)

    def _new_slot_array(self, name: str) -> zarr.Array:
        """A per-weight array a version 4 store starts to hold with this commit."""
        group = self.store.group
        if name in group:  # left by a writer killed before its commit
            del group[name]
        array = create_slot_array(group, name, self.header.mask_bits)
        self.store.arrays[name] = array
        return array

    def _row_table(self, task_count: int) -> zarr.Array:
        """The task_rows array: made by the first replace (version 4: by creation), grown in
        whole chunks."""
        arrays, group = self.store.arrays, self.store.group
        if "task_rows" not in arrays:
            if "task_rows" in group:  # left by a writer killed before its commit
                del group["task_rows"]
            arrays["task_rows"] = create_row_table(group)
        table = arrays["task_rows"]
        if table.shape[1] < task_count:
            table.resize((2, -(-task_count // TASK_ROWS_CHUNK) * TASK_ROWS_CHUNK))
        return table

    def write_log(self, rows: Sequence[dict[str, Any]]) -> int:
        """Write audit rows past the committed ones; returns the log count to commit."""
        count = self.header.log_count
        if not rows:
            return count
        end = count + len(rows)
        if end > MAX_LOG_ROWS:
            raise StoreError(
                f"{self.store.path}: the audit log holds the maximum of {MAX_LOG_ROWS} rows"
            )
        encoded = np.stack([encode_log_row(row) for row in rows])  # (n, LOG_BYTES)
        arrays = self.store.arrays
        if "log" not in arrays:
            arrays["log"] = self.store.group.create_array(
                "log",
                shape=(0, LOG_BYTES),
                chunks=(LOG_CHUNK_ROWS, LOG_BYTES),
                dtype="uint8",
                fill_value=0,
            )
        log = arrays["log"]
        if log.shape[0] < end:
            log.resize((end, LOG_BYTES))
        log[count:end] = encoded
        return end

    def write_packed(self, state: PackedState, framed: np.ndarray) -> None:
        """In place, raw rows kept: forget the old blobs (a commit), write the new, commit them."""
        group = self.store.group
        self.commit_header(replace(self.header, packed=None))
        if PACKED_ARRAY in group:
            del group[PACKED_ARRAY]
        layout.write_packed_array(group, framed)
        self.commit_header(replace(self.header, packed=state))

    def commit_header(self, header: StoreHeader) -> None:
        """The one atomic write that makes everything written before it part of the store."""
        store = self.store
        if header.slots is None or header.commit_count != store.header.commit_count:
            # The slot flips with this commit: digest the rows it makes current (writers build
            # them from the checked current rows, so a damaged row is never blessed here).
            held = [name for name in SLOT_ARRAYS if name in store.arrays]
            digests = tuple((n, slot_digest(store.arrays[n][header.slot], n)) for n in held)
            header = replace(header, slots=digests)
        fault_point("before-commit")
        location.confirm_lock(store.path)  # an object-store writer overtaken after its lease stops
        store.group.attrs[ATTRIBUTE_KEY] = header.to_attrs()
        store.header = header
        fault_point("committed")


@contextmanager
def transaction(path: str, expect: StoreHeader | None = None) -> Iterator[Transaction]:
    """Lock the store, read it again, and hand the change its transaction; with `expect` (the
    header the caller last saw) nothing is written if another writer committed since."""
    with write_lock(path):
        fresh = StoreReader.open(path, writable=True)
        if expect is not None and fresh.header != expect:
            raise StoreChangedError(
                f"{path}: another writer changed the store meanwhile; nothing was written"
            )
        yield Transaction(fresh)


def checked_row(
    header: StoreHeader, mask_bits: np.ndarray, scores: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A task's mask as flat bits and packed, and its (D,) scores as float32 (None: none
    given), checked to be sized for this network."""
    bits = np.asarray(mask_bits, dtype=bool).ravel()
    flat = None if scores is None else np.asarray(scores, dtype=np.float32).ravel()
    if bits.size != header.mask_bits or (flat is not None and flat.size != header.mask_bits):
        raise StoreMismatchError(
            f"mask has {bits.size} bits, the store's network has {header.mask_bits}"
        )
    return bits, pack_mask(bits), flat


def append_task(
    store: StoreReader,
    mask_bits: np.ndarray,
    scores: np.ndarray | None,
    *,
    record: dict[str, Any],
    task_stats: np.ndarray | None = None,
    log: Sequence[dict[str, Any]] = (),
    expect: StoreHeader | None = None,
) -> tuple[TaskRecord, StoreReader]:
    """Append one task (`record`: its data, classes, accuracy, train, created, seconds) in one
    transaction; returns its record and the store as committed. `scores` (the task's raw
    scores) are needed only by a store that sums them."""
    stats_size = store.header.net.stats_size
    stats = None if task_stats is None else np.asarray(task_stats, dtype=np.float32).ravel()
    if (0 if stats is None else stats.size) != stats_size:
        raise StoreMismatchError(
            f"{0 if stats is None else stats.size} per-task statistics given; the store's "
            f"network keeps {stats_size}"
        )
    bits, packed, flat_scores = checked_row(store.header, mask_bits, scores)
    with transaction(store.path, expect) as change:
        index = change.header.task_count
        if index >= MAX_TASKS:
            raise StoreError(f"{store.path}: the store holds the maximum of {MAX_TASKS} tasks")
        written = TaskRecord(
            index=index,
            data=record["data"],
            classes=tuple(int(c) for c in record["classes"]),
            rule=change.header.mask_rule,
            density=change.header.density,
            accuracy=record["accuracy"],
            sha256=mask_checksum(packed),
            train=record["train"],
            created=record["created"],
            seconds=record["seconds"],
        )
        row = change.free_row()
        change.write_task_rows(row, packed, written, stats)
        change.commit_tasks(index + 1, {index: row}, bits, flat_scores, log)
    return written, change.store


def replace_task(
    store: StoreReader,
    index: int,
    mask_bits: np.ndarray,
    score_change: np.ndarray,
    *,
    accuracy: float | None,
    train: dict[str, Any],
    seconds: float | None,
    log: Sequence[dict[str, Any]] = (),
    expect: StoreHeader | None = None,
) -> tuple[TaskRecord, StoreReader]:
    """Replace a task's mask in one transaction (readers see the old or the new one, never half).

    The new mask and record go to a row no committed task uses; the commit points the task
    at it. The task's record keeps its index, data and creation time, with `revision` + 1.
    `score_change` (D,) is added to the score sum (new raw scores minus those it replaces).
    """
    bits, packed, change_of_scores = checked_row(store.header, mask_bits, score_change)
    with transaction(store.path, expect) as change:
        fresh = change.store
        fresh.check_index(index)
        if fresh.net.stats_size:
            raise StoreError(
                f"{store.path}: {fresh.net.arch} keeps per-task statistics; replacing a "
                "task's mask is not supported for it"
            )
        hopfield = fresh.header.hopfield
        if hopfield is not None and index in hopfield.tasks:
            raise StoreError(
                f"{store.path}: task {index} is Hopfield-encoded; replacing its mask would "
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
        row = change.free_row()
        change.write_task_rows(row, packed, record)
        count_change = bits.astype(np.int64) - old_bits
        change.commit_tasks(
            fresh.task_count, {index: row}, count_change, change_of_scores, log, row_map=True
        )
    return record, change.store


def append_log(
    store: StoreReader, rows: Sequence[dict[str, Any]], expect: StoreHeader | None = None
) -> StoreReader:
    """Append audit log rows (JSON objects) in one commit."""
    with transaction(store.path, expect) as change:
        change.commit_header(replace(change.header, log_count=change.write_log(rows)))
    return change.store


def commit_hopfield(
    store: StoreReader,
    psi: np.ndarray,
    pattern_sum: np.ndarray,
    tasks: Sequence[int],
    based_on: int,
) -> tuple[HopfieldState, StoreReader]:
    """Write Psi as a new generation aside, then commit the header pointing at it.

    `based_on` is the generation the caller updated (0: none); if another writer committed
    since, nothing is written and the caller must start again from the new Psi.
    """
    d = store.header.mask_bits
    psi = np.ascontiguousarray(psi, dtype=np.float32)
    pattern_sum = np.ascontiguousarray(pattern_sum, dtype=np.int32)
    if psi.shape != (d, d) or pattern_sum.shape != (d,):
        raise StoreMismatchError(f"Psi must be ({d}, {d}) and the pattern sum ({d},)")
    with transaction(store.path) as change:
        current = change.header.hopfield
        if (0 if current is None else current.generation) != based_on:
            raise StoreError(
                f"{store.path}: another writer changed the Hopfield matrix meanwhile; run again"
            )
        state = HopfieldState(
            based_on + 1,
            tuple(int(t) for t in tasks),
            () if current is None else current.dropped,
            hopfield_checksum(psi, pattern_sum),
        )
        HopfieldState.from_attrs(state.to_attrs(), d, change.header.task_count)  # R6's checks
        group = change.store.group
        if HOPFIELD_GROUP not in group:
            group.create_group(HOPFIELD_GROUP)
        root = group[HOPFIELD_GROUP]
        for stale in [name for name in root.group_keys() if name != f"g{based_on}"]:
            del root[stale]  # left by a writer killed before its commit
        generation = root.create_group(f"g{state.generation}")
        generation.create_array(
            "psi", shape=(d, d), chunks=(d, d), dtype="float32", compressors=None
        )[...] = psi
        generation.create_array(
            "pattern_sum", shape=(d,), chunks=(d,), dtype="int32", compressors=None
        )[...] = pattern_sum
        change.commit_header(replace(change.header, hopfield=state))
        if f"g{based_on}" in root.group_keys():
            del root[f"g{based_on}"]
    return state, change.store


def drop_masks(store: StoreReader, tasks: Sequence[int]) -> tuple[HopfieldState, StoreReader]:
    """Mark encoded tasks' masks dropped (the commit), then clear their mask rows."""
    with transaction(store.path) as change:
        current = change.header.hopfield
        missing = sorted(set(tasks) - set(() if current is None else current.tasks))
        if current is None or missing:
            raise StoreError(
                f"{store.path}: only Hopfield-encoded tasks can drop their masks"
                + (f" (not encoded: {missing})" if missing else "")
            )
        added = tuple(t for t in current.tasks if t in set(tasks) - set(current.dropped))
        state = replace(current, dropped=current.dropped + added)
        change.commit_header(replace(change.header, hopfield=state))
        empty = np.zeros(change.header.mask_bytes, dtype=np.uint8)
        for index in state.dropped:  # also finishes a drop interrupted after its commit
            row = int(change.store.rows([index])[0])
            change.store.arrays["masks"][row] = empty  # equals the fill value: no chunk left
    return state, change.store


def create(
    path: str,
    net: NetConfig,
    rule: str,
    density: float | None,
    *,
    er_scale: float | None = None,
    keep_scores: bool = False,
    version: int = LEAN_VERSION,
) -> None:
    """Create an empty store at a normalised path; refuses to overwrite an existing one.

    Version 4 holds score sums only with `keep_scores` (what `--transfer` needs) and mask
    counts only once it has many tasks; version 1 (the older layout) holds both from the start.
    """
    check_rule(rule, density)
    check_er_scale(rule, er_scale)
    if version not in (1, LEAN_VERSION):
        raise StoreError(f"stores are created in version 1 or {LEAN_VERSION}, not {version}")
    if rule == "sign":
        density = None
    header = StoreHeader(
        net, rule, density, 0, row_chunk=layout.default_row_chunk(net), er_scale=er_scale
    )
    if version == LEAN_VERSION:
        kept = (("score_sum", ""),) if keep_scores else ()  # digests are made by initialise
        header = replace(header, version=version, slots=kept)
    if location.is_file(path):
        raise StoreError(f"{path}: exists and is not a directory")
    try:
        with write_lock(path):
            if StoreReader.exists(path):
                raise StoreError(f"{path}: a store already exists here")
            clear_interrupted_creation(path)
            initialise(path, header)
    except OSError as error:
        raise StoreError(f"{path}: cannot write here ({error.strerror or error})") from error


def check_creatable(path: str | Path) -> None:
    """Fail early (before any training) if a store cannot be made at a local `path`."""
    if location.is_url(str(path)):
        return  # object stores answer only when written to
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise StoreError(f"{path}: exists and is not a directory")
    if target.is_dir():
        foreign_or_unfinished(str(target))  # a folder of other files: refused now
    ancestor = target
    while not ancestor.exists():
        ancestor = ancestor.parent
    try:  # a real probe: access() says yes to root where mkdir still fails (/proc, read-only)
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is not a folder")
        os.rmdir(tempfile.mkdtemp(prefix=".supsup-probe-", dir=ancestor))
    except OSError as error:
        raise StoreError(f"{path}: cannot write here ({error.strerror or error})") from error


def clear_interrupted_creation(path: str) -> None:
    """Remove what a creator killed mid-way left; refuse a folder that holds anything else."""
    for leftover in foreign_or_unfinished(path):
        location.remove(path, leftover)


def foreign_or_unfinished(path: str) -> list[str]:
    """What a new store would replace at `path`: nothing, or an unfinished creation's entries;
    a folder holding anything else is refused (never delete what supsup did not write)."""
    leftovers = location.entries(path, ignore=LOCK_NAME)
    if not leftovers:
        return []
    try:
        group = zarr.open_group(zarr_store(path, False), mode="r", zarr_format=3)
        attrs = group.attrs.asdict()
    except Exception:
        attrs = {}
    if attrs.get(CREATING_KEY) is not True:
        raise StoreError(f"{path}: the folder is not empty and holds no supsup store")
    return leftovers
