"""Concurrent writers: real `supsup` processes appending to one store at once lose no task, and a
reader running beside them only ever sees committed, consistent states."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from supsup_cli.errors import StoreError
from supsup_cli.store import MaskStore

WRITERS = 4


def supsup(*args: str) -> subprocess.Popen[bytes]:
    """`python -m supsup_cli ...` in its own process (one torch thread: the CPU is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "supsup_cli", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes]) -> dict:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


def test_writers_started_together_on_a_new_store_lose_nothing(tmp_path: Path) -> None:
    """Four train-task runs on a path that does not exist yet: one creates, all four append."""
    path = tmp_path / "shared.zarr"
    specs = [f"permuted:{i}" for i in range(1, WRITERS + 1)]
    writers = [
        supsup("train-task", str(path), "--data", spec, "--batches", "20", "--quiet", "--json")
        for spec in specs
    ]
    states_seen, retries = set(), 0
    deadline = time.monotonic() + 600  # only ends a hung run: nothing asserted is a duration
    while any(w.poll() is None for w in writers):  # read alongside the writers, until all exit
        assert time.monotonic() < deadline, "the writers hung"
        try:
            store = MaskStore.open(path)
            assert store.verify() == []
            states_seen.add(store.task_count)
        except StoreError as error:  # not created yet, or rewritten twice while read
            reasons = ("no such store", "no zarr.json", "not a supsup store", "run again")
            assert any(reason in str(error) for reason in reasons), error
            retries += 1
        time.sleep(0.05)  # pacing only: leave the shared CPU to the writers
    outcomes = [finish(w) for w in writers]
    assert sum(o["created_store"] for o in outcomes) == 1
    assert sorted(o["index"] for o in outcomes) == list(range(WRITERS))
    store = MaskStore.open(path)
    assert store.task_count == WRITERS and store.verify() == []
    assert sorted(r.data for r in store.tasks()) == specs
    assert {r.sha256 for r in store.tasks()} == {o["sha256"] for o in outcomes}
    assert states_seen <= set(range(WRITERS + 1))
    verify = subprocess.run(
        [sys.executable, "-m", "supsup_cli", "verify", str(path)], capture_output=True, timeout=300
    )
    assert verify.returncode == 0, verify.stdout


def test_allocate_beside_train_task(permuted_store: Path, tmp_path: Path) -> None:
    """NNs allocation (which may replace a mask) and two appends on one store at once: everything
    lands. When another writer commits first, allocate takes the new tasks in as known masks and
    commits again (its own new mask moves after them)."""
    path = Path(shutil.copytree(permuted_store, tmp_path / "s.zarr"))
    allocate = supsup(
        "allocate", str(path), "--data", "permuted:1,permuted:6", "--batches-per-segment", "20",
        "--check-every", "10", "--quiet", "--json",
    )  # fmt: skip
    trains = [
        supsup("train-task", str(path), "--data", spec, "--batches", "20", "--quiet", "--json")
        for spec in ("permuted:4", "permuted:5")
    ]
    appended = [finish(train) for train in trains]
    outcome = finish(allocate)
    store = MaskStore.open(path)
    assert store.verify() == []
    assert store.task_count == 3 + len(outcome["allocated"]) + len(appended)
    records = store.tasks()
    for train in appended:
        assert records[train["index"]].sha256 == train["sha256"]
    for mask in outcome["allocated"]:
        assert records[mask].data in ("permuted:1", "permuted:6")
    assert set(outcome["taken_in"]) <= {train["index"] for train in appended}


def test_hopfield_encode_beside_train_task(split_bn_store: Path, tmp_path: Path) -> None:
    """Folding masks into the energy matrix while other writers append tasks."""
    path = Path(shutil.copytree(split_bn_store, tmp_path / "bn.zarr"))
    options = ["--mask-rule", "sign", "--optimizer", "sgd", "--lr", "0.1", "--batches", "10"]
    trains = [
        supsup("train-task", str(path), "--data", spec, *options, "--quiet", "--json")
        for spec in ("split:2", "split:3")
    ]
    encode = supsup("hopfield-encode", str(path), "--tasks", "0,1", "--quiet", "--json")
    finish(encode)
    for train in trains:
        finish(train)
    store = MaskStore.open(path)
    assert store.verify() == []
    assert store.task_count == 4
    assert store.header.hopfield is not None and set(store.header.hopfield.tasks) == {0, 1}
