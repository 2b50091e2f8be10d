"""Killed writers: a writer SIGKILLed at any point of an append or a creation leaves a store that
opens, verifies, and holds the old or the new task count; the next writer is never blocked."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
import torch
import zarr.storage._local as local_store

from supsup_cli.format.architectures import NetConfig
from supsup_cli.store import MaskStore, layout
from supsup_cli.store.faults import COPY_FAULT_STEP, FAULT_ENV, FAULT_STEPS
from supsup_cli.store.layout import write_lock as _write_lock

CREATION_STEPS = [s for s in FAULT_STEPS if s.startswith("create-")]
APPEND_STEPS = [s for s in FAULT_STEPS if not s.startswith("create-")]
NET = NetConfig("lenet-300-100", 10, 0)
FORK = multiprocessing.get_context("fork")  # children inherit the loaded modules: no re-import


def append_random_task(path: Path, seed: int) -> None:
    """Append one task with a random mask and scores (what train-task appends, minus training)."""
    rng = np.random.default_rng(seed)
    bits = rng.random(NET.mask_bits) < 0.5
    scores = torch.from_numpy(rng.standard_normal(NET.mask_bits, dtype=np.float32))
    MaskStore.open(path, writable=True).append_task(
        bits,
        scores,
        data=f"permuted:{seed}",
        classes=range(10),
        accuracy=0.5,
        train={"seed": seed},
        created="2026-01-01T00:00:00+00:00",
        seconds=1.0,
    )


def _append_with_fault(path: Path, step: str, seed: int) -> None:
    os.environ[FAULT_ENV] = step
    append_random_task(path, seed)


def _create_with_fault(path: Path, step: str) -> None:
    os.environ[FAULT_ENV] = step
    MaskStore.create(path, NET, "topk", 0.5)


def _append_forever(path: Path, first_seed: int) -> None:
    for seed in range(first_seed, first_seed + 10_000):
        append_random_task(path, seed)


def _hold_lock(path: Path, ready: Any) -> None:
    with _write_lock(str(path)):
        ready.set()
        time.sleep(600)  # until the test kills it (the bound only ends an orphaned child)


class _TornFile:
    """A file that takes half of what is written to it, then its process is SIGKILLed."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.handle.write(view[: len(view) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        return 0  # never reached


@contextmanager
def file_writes(seen: Callable[[str], Any], kill_at: int = 0, torn: bool = False) -> Iterator[None]:
    """Tell `seen` the path of each file zarr writes (aside, then renamed into place) before it is
    written. The `kill_at`-th is SIGKILLed: before it is opened, or (torn) with half its bytes
    written aside."""
    real, count = local_store._atomic_write, [0]

    @contextmanager
    def write(path: Path, mode: str, exclusive: bool = False) -> Iterator[Any]:
        count[0] += 1
        number = count[0]
        seen(str(path))
        if number == kill_at and not torn:
            os.kill(os.getpid(), signal.SIGKILL)
        with real(path, mode, exclusive=exclusive) as handle:
            yield _TornFile(handle) if number == kill_at else handle

    local_store._atomic_write = write
    try:
        yield
    finally:
        local_store._atomic_write = real


def _append_killed_at_file_write(path: Path, kill_at: int, torn: bool, sink: Any) -> None:
    with file_writes(sink.send, kill_at, torn):
        _append_forever(path, 100 * kill_at)


def run_child(target, *args) -> int:  # noqa: ANN001
    child = FORK.Process(target=target, args=args)
    child.start()
    child.join(60)
    assert child.exitcode is not None, "the child hung"
    return child.exitcode


def assert_sound(path: Path, counts: set[int]) -> int:
    store = MaskStore.open(path)
    assert store.verify() == [], store.verify()
    assert store.task_count in counts, (store.task_count, counts)
    return store.task_count


@pytest.fixture
def two_task_store(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    MaskStore.create(path, NET, "topk", 0.5)
    for seed in (1, 2):
        append_random_task(path, seed)
    return path


@pytest.mark.parametrize("step", APPEND_STEPS)
def test_append_killed_at_each_step(two_task_store: Path, step: str) -> None:
    assert run_child(_append_with_fault, two_task_store, step, 3) == -signal.SIGKILL
    count = assert_sound(two_task_store, {3} if step == "committed" else {2})
    with pytest.MonkeyPatch.context() as patch:  # one try at the lock: it must be free at once
        patch.setattr(layout, "LOCK_TIMEOUT_SECONDS", 0.0)
        append_random_task(two_task_store, 4)  # the dead writer's lock is gone with it
    assert_sound(two_task_store, {count + 1})


@pytest.mark.parametrize("step", APPEND_STEPS)
def test_append_that_would_store_the_counts_killed_at_each_step(
    two_task_store: Path, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third task brings the counts (threshold lowered to 3): killed before its commit, the
    store holds no counts and verifies; the next append makes them, over any leftover."""
    monkeypatch.setattr(layout, "STORED_COUNTS_TASKS", 3)  # the forked child inherits it
    assert run_child(_append_with_fault, two_task_store, step, 3) == -signal.SIGKILL
    count = assert_sound(two_task_store, {3} if step == "committed" else {2})
    held = MaskStore.open(two_task_store).header.slot_arrays
    assert held == (("mask_counts",) if count == 3 else ())
    append_random_task(two_task_store, 4)
    assert_sound(two_task_store, {count + 1})
    assert MaskStore.open(two_task_store).header.slot_arrays == ("mask_counts",)


@pytest.mark.parametrize("step", CREATION_STEPS)
def test_creation_killed_at_each_step(tmp_path: Path, step: str) -> None:
    path = tmp_path / "new.zarr"
    assert run_child(_create_with_fault, path, step) == -signal.SIGKILL
    assert not MaskStore.exists(path)  # no store yet: the old state of a new path
    MaskStore.create(path, NET, "topk", 0.5)  # the next creator clears the leftovers
    append_random_task(path, 1)
    assert_sound(path, {1})


@pytest.mark.parametrize("torn", [False, True], ids=["between-files", "torn-file"])
def test_kills_at_every_file_write_never_break_the_store(two_task_store: Path, torn: bool):
    """SIGKILL at each file of two appends in a row, also halfway through zarr's own writes (a
    torn aside file): each time the store holds exactly the appends whose header was written."""
    written: list[str] = []
    with file_writes(written.append):
        append_random_task(two_task_store, 3)
    header, count = two_task_store / "zarr.json", 3
    for kill_at in range(1, 2 * len(written) + 1):
        reader, sink = FORK.Pipe(duplex=False)
        with reader, sink:
            code = run_child(_append_killed_at_file_write, two_task_store, kill_at, torn, sink)
            assert code == -signal.SIGKILL
            paths = [reader.recv() for _ in range(kill_at)]  # the child's writes, the last killed
            assert not reader.poll()
        commits = sum(Path(p) == header for p in paths[:-1])
        if torn:
            assert list(two_task_store.rglob("*.partial")), "a torn write leaves its aside file"
        count = assert_sound(two_task_store, {count + commits})
    append_random_task(two_task_store, 1)  # the next writer clears the aside files, then appends
    assert not list(two_task_store.rglob("*.partial"))
    assert_sound(two_task_store, {count + 1})


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(
    two_task_store: Path,
) -> None:
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_lock, args=(two_task_store, ready))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with pytest.MonkeyPatch.context() as patch:  # one try at the lock, no waiting
        patch.setattr(layout, "LOCK_TIMEOUT_SECONDS", 0.0)
        append_random_task(two_task_store, 3)  # flock died with its holder: no stale lock
    assert_sound(two_task_store, {3})


def test_the_cli_writer_killed_by_the_fault_hook(permuted_store: Path, tmp_path: Path) -> None:
    """End to end: `supsup train-task` in its own process, SIGKILLed before its commit."""
    store = Path(shutil.copytree(permuted_store, tmp_path / "s.zarr"))
    command = [sys.executable, "-m", "supsup_cli", "train-task", str(store)]
    command += ["--data", "permuted:5", "--batches", "5", "--quiet"]
    killed = subprocess.run(
        command, env={**os.environ, FAULT_ENV: "before-commit"}, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    verify = subprocess.run(
        [sys.executable, "-m", "supsup_cli", "verify", str(store)], capture_output=True, timeout=300
    )
    assert verify.returncode == 0, verify.stdout.decode()
    assert_sound(store, {3})


def _append_killed_at_rename(path: Path, rename: int) -> None:
    """SIGKILL at the `rename`-th file zarr moves into place: the aside file is written, the
    rename never happens (a torn write as the filesystem sees it)."""
    real_replace, calls = Path.replace, [0]

    def replace(self: Path, target: Any) -> Path:
        calls[0] += 1
        if calls[0] == rename:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(self, target)

    Path.replace = replace  # this child process only
    append_random_task(path, 3)


@pytest.mark.parametrize("rename", range(1, 9))
def test_append_killed_inside_each_file_write(two_task_store: Path, rename: int) -> None:
    code = run_child(_append_killed_at_rename, two_task_store, rename)
    if code == 0:  # an append renames fewer files than this: nothing to interrupt
        assert_sound(two_task_store, {3})
        return
    assert code == -signal.SIGKILL
    assert list(two_task_store.rglob("*.partial")), "the kill should leave an aside file"
    count = assert_sound(two_task_store, {2, 3})
    append_random_task(two_task_store, 4)  # and the next writer clears it
    assert not list(two_task_store.rglob("*.partial"))
    assert_sound(two_task_store, {count + 1})


def test_a_copy_killed_before_its_header_is_no_store(two_task_store: Path, tmp_path: Path):
    """`supsup copy` killed after writing the arrays: the source is untouched and unlocked, the
    target is no store, and the next copy to the same path clears the leftovers and succeeds."""
    target = tmp_path / "copy.zarr"
    command = [sys.executable, "-m", "supsup_cli", "copy", str(two_task_store), str(target)]
    done = subprocess.run(
        command, env={**os.environ, FAULT_ENV: COPY_FAULT_STEP}, capture_output=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL and (target / "masks").exists()
    assert not MaskStore.exists(target)
    assert_sound(two_task_store, {2})
    copy = MaskStore.open(two_task_store).copy_to(target)
    assert copy.tasks() == MaskStore.open(two_task_store).tasks() and copy.verify() == []
