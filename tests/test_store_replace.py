"""store: atomic replacement of a task's mask (format version 2) and the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from supsup_cli.errors import StoreError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.store import MaskStore
from supsup_cli.store.layout import LOG_BYTES
from supsup_cli.store.writer import Transaction

NET = NetConfig("lenet-300-100", 10, 0)
D = NET.mask_bits


def random_bits(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(D) < 0.5


def small_store(path: Path, tasks: int = 3) -> MaskStore:
    """A sign-rule store with `tasks` random masks (no training: these tests are about bytes),
    version 1 (the older layout: counts and score sums stored), which a replace makes 2."""
    store = MaskStore.create(path, NET, "sign", None, version=1)
    for seed in range(tasks):
        store.append_task(
            random_bits(seed),
            torch.full((D,), float(seed)),
            data=f"permuted:{seed}",
            classes=range(10),
            accuracy=0.5,
            train={"batches": 1},
            created="2026-01-01T00:00:00+00:00",
            seconds=1.0,
        )
    return store


def replace(store: MaskStore, index: int, seed: int, **kw) -> None:
    store.replace_task(
        index,
        random_bits(seed),
        torch.ones(D),
        accuracy=0.75,
        train={"batches": 2},
        seconds=2.0,
        **kw,
    )


def snapshot(path: Path, index: int) -> tuple[int, np.ndarray, np.ndarray]:
    """What a fresh reader sees of one task: its revision, its mask and the counts."""
    reader = MaskStore.open(path)
    assert reader.verify() == []
    return reader.task(index).revision, reader.read_mask(index), reader.mask_counts().copy()


def header_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["supsup"]


def test_replace_changes_one_mask_and_keeps_the_rest(tmp_path):
    path = tmp_path / "s.zarr"
    store = small_store(path)
    before = store.read_packed()
    score_sum = store.score_mean() * 3
    record = store.replace_task(
        1, random_bits(10), torch.ones(D), accuracy=0.75, train={"batches": 2}, seconds=2.0
    )
    reopened = MaskStore.open(path)
    assert record.revision == 1 and reopened.task(1) == record
    assert record.index == 1 and record.data == "permuted:1" and record.accuracy == 0.75
    assert np.array_equal(reopened.read_mask(1), random_bits(10))
    assert np.array_equal(reopened.read_packed([0, 2]), before[[0, 2]])
    expected = random_bits(0).astype(int) + random_bits(10) + random_bits(2)
    assert np.array_equal(reopened.mask_counts(), expected)
    np.testing.assert_allclose(reopened.score_mean() * 3, score_sum + 1, rtol=1e-6)
    assert reopened.task_count == 3 and reopened.verify() == []


def test_a_store_becomes_version_2_only_when_a_mask_is_replaced(tmp_path):
    path = tmp_path / "s.zarr"
    store = small_store(path, tasks=2)
    attrs = header_attrs(path)
    assert attrs["version"] == 1 and "revision" not in attrs and "rows" not in attrs
    replace(store, 0, 5)
    attrs = header_attrs(path)
    # Revision counts the 2 appends and the replace; one spare row holds task 0's new mask.
    assert (attrs["version"], attrs["revision"], attrs["rows"]) == (2, 3, 3)


def test_a_reader_during_the_update_sees_the_old_or_the_new_mask(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    store = small_store(path)
    replace(store, 2, 20)  # version 2 already, so the next replace reuses a free row
    old = snapshot(path, 2)
    seen = []
    original = zarr.Array.__setitem__

    def write_then_read(array, selection, value):
        original(array, selection, value)
        seen.append(snapshot(path, 2))  # a reader opening between any two writes

    monkeypatch.setattr(zarr.Array, "__setitem__", write_then_read)
    replace(store, 2, 21)
    monkeypatch.setattr(zarr.Array, "__setitem__", original)
    new = snapshot(path, 2)
    assert len(seen) >= 4  # mask row, record row, counts, score sum, row table
    assert new[0] == old[0] + 1 and np.array_equal(new[1], random_bits(21))
    for revision, bits, counts in seen:
        assert revision == old[0]
        assert np.array_equal(bits, old[1]) and np.array_equal(counts, old[2])


def test_a_writer_killed_before_its_commit_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    store = small_store(path)
    for first_time in (True, False):  # the upgrade to version 2, then a version 2 replace
        old = snapshot(path, 0)

        def crash(self, header):
            raise KeyboardInterrupt

        monkeypatch.setattr(Transaction, "commit_header", crash)
        with pytest.raises(KeyboardInterrupt):
            replace(store, 0, 30)
        monkeypatch.undo()
        assert header_attrs(path)["version"] == (1 if first_time else 2)
        revision, bits, counts = snapshot(path, 0)
        assert revision == old[0] and np.array_equal(bits, old[1])
        assert np.array_equal(counts, old[2])
        replace(store, 0, 31 + first_time)  # the next writer overwrites the leftovers
        assert MaskStore.open(path).verify() == []


def test_rows_are_reused_so_replacing_does_not_grow_the_store(tmp_path):
    path = tmp_path / "s.zarr"
    store = small_store(path)
    for step in range(8):
        replace(store, step % 3, 100 + step)
    store.append_task(
        random_bits(200),
        torch.zeros(D),
        data="permuted:9",
        classes=range(10),
        accuracy=None,
        train={},
        created="",
        seconds=None,
    )
    replace(store, 3, 201)
    reopened = MaskStore.open(path)
    assert reopened.task_count == 4 and reopened.header.rows <= 5
    assert reopened.arrays["masks"].shape[0] <= 5
    assert [r.revision for r in reopened.tasks()] == [3, 3, 2, 1]
    assert np.array_equal(reopened.read_mask(3), random_bits(201))
    assert np.array_equal(reopened.read_mask(1), random_bits(107))
    assert reopened.verify() == []


def test_expect_refuses_when_another_writer_committed(tmp_path):
    path = tmp_path / "s.zarr"
    store = small_store(path, tasks=2)
    seen = store.header
    replace(MaskStore.open(path, writable=True), 0, 40)  # someone else
    with pytest.raises(StoreError, match="another writer"):
        replace(store, 1, 41, expect=seen)
    with pytest.raises(StoreError, match="another writer"):
        store.append_log([{"batch": 0}], expect=seen)
    assert MaskStore.open(path).task(1).revision == 0


def test_corrupt_row_table_is_a_clear_error(tmp_path):
    path = tmp_path / "s.zarr"
    store = small_store(path)
    replace(store, 0, 50)
    slot = store.header.slot
    table = zarr.open_array(str(path / "task_rows"), mode="r+")
    table[slot, 1] = table[slot, 2]  # two tasks on one row
    with pytest.raises(StoreError, match="distinct rows"):
        MaskStore.open(path).tasks()
    assert any("distinct rows" in p for p in MaskStore.open(path).verify())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("revision", 1, "invalid revision"),
        ("rows", 9, "invalid rows"),
        ("log_count", -1, "invalid log_count"),
    ],
)
def test_hostile_version_2_headers_are_refused(tmp_path, key, value, message):
    path = tmp_path / "s.zarr"
    replace(small_store(path), 0, 60)
    document = json.loads((path / "zarr.json").read_text())
    document["attributes"]["supsup"][key] = value
    (path / "zarr.json").write_text(json.dumps(document))
    with pytest.raises(StoreError, match=message):
        MaskStore.open(path)


def test_audit_log_round_trip_and_commit(tmp_path):
    path = tmp_path / "s.zarr"
    store = small_store(path, tasks=1)
    assert store.read_log() == []
    rows = [{"batch": i, "decision": "continue", "p": 0.5} for i in range(300)]
    store.append_log(rows[:1])
    store.append_log(rows[1:])  # crosses a chunk boundary
    assert MaskStore.open(path).read_log() == rows
    replace(store, 0, 70, log=[{"batch": 300, "decision": "reuse"}])
    assert MaskStore.open(path).read_log()[-1] == {"batch": 300, "decision": "reuse"}
    assert header_attrs(path)["log_count"] == 301


def test_log_rows_past_the_count_are_ignored_and_bad_rows_refused(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    store = small_store(path, tasks=1)
    store.append_log([{"batch": 0}])

    def crash(self, header):
        raise KeyboardInterrupt

    monkeypatch.setattr(Transaction, "commit_header", crash)
    with pytest.raises(KeyboardInterrupt):
        store.append_log([{"batch": 1}])
    monkeypatch.undo()
    assert MaskStore.open(path).read_log() == [{"batch": 0}]
    with pytest.raises(StoreError, match="limit"):
        store.append_log([{"text": "x" * LOG_BYTES}])
    with pytest.raises(StoreError, match="JSON object"):
        store.append_log([["not", "an", "object"]])
    log = zarr.open_array(str(path / "log"), mode="r+")
    log[0, :3] = np.frombuffer(b"{{{", dtype=np.uint8)
    with pytest.raises(StoreError, match="log row 0"):
        MaskStore.open(path).read_log()
    assert any("log row 0" in p for p in MaskStore.open(path).verify())
