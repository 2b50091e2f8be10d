"""`verify`: the full reader check of reader rule R13 (records, checksums, padding bits, counts,
packed blobs, Hopfield energy, statistics, log), as a list of problems."""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from ..errors import StoreError
from ..format import codecs
from ..format.bits import padding_is_zero, unpack_mask
from ..format.header import mask_checksum
from .reader import StoreReader, dropped_counts

VERIFY_ATTEMPTS: Final = 5  # verify runs again when a writer committed during the check


def verify(store: StoreReader) -> list[str]:
    """Full check (reader rule R13): records, checksums, padding bits, counts. [] if sound.

    A writer may commit while this reads; a check that failed then is run again on the new
    commit (a few times), so a store appended to concurrently is not reported as damaged.
    """
    for _ in range(VERIFY_ATTEMPTS):
        problems = _verify_once(store)
        if not problems:
            return problems
        again = StoreReader.open(store.path)
        if again.header == store.header:
            return problems
        store = again
    return problems


def _verify_once(store: StoreReader) -> list[str]:
    problems: list[str] = []
    total = np.zeros(store.header.mask_bits, dtype=np.uint64)
    hopfield = store.header.hopfield
    encoded_kept = np.zeros(store.header.mask_bits, dtype=np.int64)
    try:
        rows = store.rows()
    except StoreError as error:
        return [str(error)]
    try:  # one pass decodes a chain of packed rows once; a failure is then named per task
        stored: np.ndarray | None = store.mask_rows(rows)
    except StoreError:
        stored = None
    for index in range(store.task_count):
        try:
            record = store.task(index)
        except StoreError as error:
            problems.append(str(error))
            continue
        if index in store.dropped_tasks():  # no bytes to check; R13 counts it by pattern sum
            continue
        try:
            packed = (
                stored[index] if stored is not None else store.mask_rows(rows[index : index + 1])[0]
            )
        except StoreError as error:
            problems.append(f"task {index}: {error}")
            continue
        if mask_checksum(packed) != record.sha256:
            problems.append(f"task {index}: mask bytes do not match their sha256")
            continue
        if not padding_is_zero(packed, store.header.mask_bits):
            problems.append(f"task {index}: padding bits of the last mask byte are not zero")
        bits = unpack_mask(packed, store.header.mask_bits)
        total += bits
        if hopfield is not None and index in hopfield.tasks:
            encoded_kept += bits
    if hopfield is not None:
        dropped_bits = _verify_hopfield(store, encoded_kept, problems)
        total += dropped_bits.astype(np.uint64)
    if store.header.packed is not None and not store.header.packed.dropped:
        problems += _verify_blobs(store, rows)
    if "task_stats" in store.arrays:
        stats = store.read_rows("task_stats", rows)
        if not np.all(np.isfinite(stats)):
            problems.append("task_stats holds non-finite values")
    held = store.header.slot_arrays  # version 4: counts summed from the masks where not held
    try:
        if "mask_counts" in held and not problems:
            if not np.array_equal(total, store.read_slot("mask_counts")):
                problems.append("mask_counts disagree with the sum of the committed masks")
    except StoreError as error:
        problems.append(str(error))
    try:
        if "score_sum" in held and not np.all(np.isfinite(store.read_slot("score_sum"))):
            problems.append("score_sum holds non-finite values")
    except StoreError as error:
        problems.append(str(error))
    try:
        store.read_log()
    except StoreError as error:
        problems.append(str(error))
    return problems


def _verify_blobs(store: StoreReader, rows: np.ndarray) -> list[str]:
    """Blobs kept beside raw rows must decode to those rows (R13)."""
    dropped = set(store.dropped_tasks())
    kept = [task for task in range(store.task_count) if task not in dropped]
    try:
        blobs, superseded = store.blobs(rows[kept])
        mine = [t for t in kept if int(rows[t]) in blobs and int(rows[t]) not in superseded]
        sites = [math.prod(shape) for shape in store.net.mask_shapes]
        codec = codecs.get_codec(store.header.packed.codec)
        decoded = codecs.decode_packed(codec, blobs, sites, rows[mine].tolist())
    except StoreError as error:
        return [f"packed masks: {error}"]
    raw = store.read_rows("masks", rows[mine])
    return [
        f"task {task}: packed mask does not match the raw mask"
        for task, ours, theirs in zip(mine, decoded, raw, strict=True)
        if not np.array_equal(ours, theirs)
    ]


def _verify_hopfield(
    store: StoreReader, encoded_kept: np.ndarray, problems: list[str]
) -> np.ndarray:
    """Check Psi (R6, R10, checksum, finite, symmetric) and the pattern sum; return the
    per-weight count of the dropped masks, which the pattern sum determines."""
    none = np.zeros(store.header.mask_bits, dtype=np.int64)
    try:
        psi, pattern_sum = store.read_hopfield()
    except StoreError as error:
        problems.append(str(error))
        return none
    if not np.all(np.isfinite(psi)) or not np.array_equal(psi, psi.T):
        problems.append("the Hopfield matrix is not finite and symmetric")
    try:
        return dropped_counts(store, encoded_kept, pattern_sum)
    except StoreError as error:
        problems.append(str(error))
        return none
