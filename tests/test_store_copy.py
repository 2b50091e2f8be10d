"""`supsup copy`: a store, whole, at a new path, in the current many-rows-per-chunk layout."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import filelock
import fsspec
import numpy as np
import pytest
import zarr
from test_store import NET, append
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import StoreChangedError, StoreError
from supsup_cli.store import MaskStore
from supsup_cli.store import layout as store_module
from supsup_cli.store import location as storage
from supsup_cli.store.layout import LOCK_NAME

runner = CliRunner()


def cli(*argv: str) -> dict:
    result = runner.invoke(app, [*argv, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_one_row_store_is_copied_into_many_rows_per_chunk(tmp_path: Path, monkeypatch) -> None:
    """A store from before `row_chunk` (one row per chunk, no such header key): the copy keeps
    every task, record, count, score sum and log row, in chunks of default_row_chunk rows."""
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "default_row_chunk", lambda net: 1)
        old = MaskStore.create(tmp_path / "old.zarr", NET, "sign", None)
        for seed in range(5):
            append(old, seed, f"permuted:{seed + 1}")
        old.append_log([{"event": "note", "batch": 3}])
    old = MaskStore.open(old.path)
    assert old.header.row_chunk == 1

    copy = old.copy_to(tmp_path / "new.zarr")
    rows = store_module.default_row_chunk(NET)
    assert rows > 1 and copy.header.row_chunk == rows
    assert copy.arrays["masks"].chunks == (rows, copy.header.mask_bytes)
    assert copy.arrays["records"].chunks[0] == rows
    assert copy.tasks() == old.tasks()
    np.testing.assert_array_equal(copy.read_packed(), old.read_packed())
    np.testing.assert_array_equal(copy.mask_counts(), old.mask_counts())
    np.testing.assert_array_equal(copy.score_mean(), old.score_mean())
    assert copy.read_log() == old.read_log() and len(copy.read_log()) == 1
    assert copy.verify() == [] and old.verify() == []
    append(copy, 9)  # the copy grows like any new store
    assert MaskStore.open(copy.path).task_count == 6 and MaskStore.open(copy.path).verify() == []


def test_hopfield_packed_and_task_stats_survive_the_copy(
    split_bn_store: Path, tmp_path: Path
) -> None:
    """bn-2048-2048 (per-task statistics: a third row-chunked array), Hopfield-encoded and packed
    in place, then copied through the CLI: the same answers from both."""
    source = Path(shutil.copytree(split_bn_store, tmp_path / "s.zarr"))
    for argv in (["hopfield-encode", str(source)], ["pack", str(source)]):
        assert runner.invoke(app, [*argv, "--quiet"]).exit_code == 0
    summary = cli("copy", str(source), str(tmp_path / "c.zarr"))
    assert summary["tasks"] == 2 and summary["copy"] == str(tmp_path / "c.zarr")

    def answers(store: Path) -> list:
        info = cli("info", str(store))
        for key in ("store", "stored_bytes"):
            info.pop(key)
        hopfield = cli("infer", str(store), "--method", "hopfield", "--data", "split:0..1",
                       "--trials", "2", "--steps", "3", "--quiet")  # fmt: skip
        oneshot = cli("infer", str(store), "--data", "split:0..1", "--trials", "2", "-q")
        return [info, hopfield["specs"], oneshot["specs"]]

    from_source = answers(source)
    assert answers(tmp_path / "c.zarr") == from_source
    assert from_source[0]["hopfield"] is not None
    copied = MaskStore.open(tmp_path / "c.zarr")
    assert copied.header.packed is not None and copied.arrays["task_stats"].chunks[0] > 1
    np.testing.assert_array_equal(
        copied.read_task_stats(1), MaskStore.open(source).read_task_stats(1)
    )
    assert runner.invoke(app, ["verify", str(tmp_path / "c.zarr")]).exit_code == 0


def test_a_copy_onto_a_store_or_from_nothing_is_refused(permuted_store: Path, tmp_path: Path):
    taken = tmp_path / "taken.zarr"
    shutil.copytree(permuted_store, taken)
    before = sorted(p.name for p in taken.rglob("*"))
    result = runner.invoke(app, ["copy", str(permuted_store), str(taken)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in taken.rglob("*")) == before
    result = runner.invoke(app, ["copy", str(tmp_path / "none.zarr"), str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "no such store" in result.stderr
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(StoreError, match="already exists"):
        MaskStore.open(permuted_store).copy_to(taken)


def test_a_damaged_store_is_not_copied(permuted_store: Path, tmp_path: Path) -> None:
    source = tmp_path / "s.zarr"
    shutil.copytree(permuted_store, source)
    group = zarr.open_group(str(source), mode="r+")
    row = group["masks"][1]
    row[3] ^= 1
    group["masks"][1] = row
    result = runner.invoke(app, ["copy", str(source), str(tmp_path / "c.zarr")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "does not verify, not copied" in result.stderr and "task 1" in result.stderr
    assert not (tmp_path / "c.zarr").exists()


def _read_only(monkeypatch, folder: Path) -> list[bool]:
    """Make the lock file of `folder` fail as on a read-only file system (CI cannot mount one);
    set the returned flag's [0] to False to let a writer in."""
    state = [True]

    class Lock(filelock.FileLock):
        def acquire(self, *args, **kwargs):
            if state[0] and self.lock_file == storage.lock_file(str(folder), LOCK_NAME):
                raise OSError(errno.EROFS, "Read-only file system", self.lock_file)
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr(filelock, "FileLock", Lock)  # the writer's lock imports it when it locks
    return state


def test_a_store_that_cannot_be_locked_is_copied_and_packed(
    permuted_store: Path, tmp_path: Path, monkeypatch
) -> None:
    """A read-only folder takes no writer lock: copy and pack --out read it without one;
    writers get one line saying why they cannot write."""
    source = tmp_path / "ro.zarr"
    shutil.copytree(permuted_store, source)
    _read_only(monkeypatch, source)
    copied = cli("copy", str(source), str(tmp_path / "c.zarr"))
    assert copied["tasks"] == MaskStore.open(source).task_count
    copy = MaskStore.open(tmp_path / "c.zarr")
    assert copy.tasks() == MaskStore.open(source).tasks() and copy.verify() == []
    np.testing.assert_array_equal(copy.read_packed(), MaskStore.open(source).read_packed())
    packed = runner.invoke(app, ["pack", str(source), "--out", str(tmp_path / "p.zarr")])
    assert packed.exit_code == 0, packed.output
    assert MaskStore.open(tmp_path / "p.zarr").verify() == []
    for argv in (
        ["pack", str(source)],
        ["masks", "merge", str(source), "--tasks", "0,1", "--rule", "or"],
    ):
        refused = runner.invoke(app, argv)
        assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
        assert "cannot write here (Read-only file system)" in refused.stderr


def test_a_copy_without_lock_refuses_a_store_that_changed_meanwhile(
    permuted_store: Path, tmp_path: Path, monkeypatch
) -> None:
    """No lock, so a writer may commit while the copy reads: that copy is refused and removed,
    and the next one carries the new task."""
    source = tmp_path / "ro.zarr"
    shutil.copytree(permuted_store, source)
    read_only = _read_only(monkeypatch, source)
    before = MaskStore.open(source).task_count

    def commit_once(done: int, total: int) -> None:
        if MaskStore.open(source).task_count == before:
            read_only[0] = False  # another machine's writer, say
            append(MaskStore.open(source, writable=True), 7, "permuted:7")
            read_only[0] = True

    with pytest.raises(StoreChangedError, match="changed the store while it was read"):
        MaskStore.open(source).copy_to(tmp_path / "c.zarr", commit_once)
    assert not MaskStore.exists(tmp_path / "c.zarr")
    assert [p.name for p in (tmp_path / "c.zarr").iterdir()] in ([], [store_module.LOCK_NAME])
    copy = MaskStore.open(source).copy_to(tmp_path / "c.zarr")
    assert copy.task_count == before + 1 and copy.verify() == []


def test_a_store_behind_a_url_without_locks_is_copied(permuted_store: Path, tmp_path: Path):
    """memory:// (like http://) has no conditional writes, so no lock: copy and pack --out read
    it all the same."""
    memory = fsspec.filesystem("memory")
    memory.put(str(permuted_store), "/ro-copy-test.zarr", recursive=True)
    try:
        url = "memory://ro-copy-test.zarr"
        copy = MaskStore.open(url).copy_to(tmp_path / "c.zarr")
        assert copy.tasks() == MaskStore.open(permuted_store).tasks() and copy.verify() == []
        packed = runner.invoke(app, ["pack", url, "--out", str(tmp_path / "p.zarr")])
        assert packed.exit_code == 0, packed.output
        refused = runner.invoke(app, ["pack", url])
        assert refused.exit_code == 2 and "writing needs a lock" in refused.stderr
    finally:
        memory.rm("/ro-copy-test.zarr", recursive=True)
