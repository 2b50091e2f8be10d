"""Reliability campaigns, larger than the tests: concurrent writers (tasks lost), killed writers
(stores broken), hostile stores x every command (tracebacks, wrong answers). Prints one table.

    /work/venv/bin/python benchmarks/reliability.py [--writers 8] [--appends 10] [--kills 100]

Masks are random (appends without training) so the campaigns measure the store, not training;
the hostile stores are those of tests/hostile_stores.py, run through every command in-process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import fsspec
import numpy as np
import torch
from typer.testing import CliRunner
from zarr.storage import LocalStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile_stores import (  # noqa: E402
    BREAKAGES,
    CANARY,
    READERS,
    WRITERS,
    make_hostile,
    stable,
)

from supsup_cli.cli import app
from supsup_cli.format.architectures import NetConfig
from supsup_cli.store import MaskStore
from supsup_cli.store import location as storage
from supsup_cli.store.faults import FAULT_ENV, FAULT_STEPS

NET = NetConfig("lenet-300-100", 10, 0)
FORK = multiprocessing.get_context("fork")
RENAMES_PER_APPEND = 7  # masks and records metadata (resize), 4 chunks, the header (commit)
COMMANDS = {"verify": ["verify", "{store}", "--json"], **READERS, **WRITERS}


def append_random_task(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    MaskStore.open(path, writable=True).append_task(
        rng.random(NET.mask_bits) < 0.5,
        torch.from_numpy(rng.standard_normal(NET.mask_bits, dtype=np.float32)),
        data=f"permuted:{seed % 1000 + 1}",
        classes=range(10),
        accuracy=0.5,
        train={"seed": seed},
        created="2026-01-01T00:00:00+00:00",
        seconds=1.0,
    )


def _appender(path: Path, seeds: list[int]) -> None:
    for seed in seeds:
        append_random_task(path, seed)


def _faulty(path: Path, step: str, seed: int) -> None:
    os.environ[FAULT_ENV] = step
    if step.startswith("create-"):
        MaskStore.create(path, NET, "topk", 0.5)
    else:
        append_random_task(path, seed)


def _killed_at_rename(path: Path, rename: int, seed: int) -> None:
    """SIGKILL at the `rename`-th file zarr moves into place (aside file written, not renamed)."""
    real_replace, calls = Path.replace, [0]

    def replace(self: Path, target: object) -> Path:
        calls[0] += 1
        if calls[0] == rename:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(self, target)

    Path.replace = replace  # this child process only
    append_random_task(path, seed)


def _forever(path: Path, first: int) -> None:
    _appender(path, list(range(first, first + 100_000)))


def sound(path: Path) -> bool:
    try:
        return MaskStore.open(path).verify() == []
    except Exception:  # noqa: BLE001  (any failure to open is a broken store here)
        return False


def concurrent_writers(root: Path, writers: int, appends: int) -> tuple[int, int, float]:
    """`writers` processes append `appends` tasks each to one new store at once."""
    path = root / "concurrent.zarr"
    MaskStore.create(path, NET, "topk", 0.5)
    started = time.perf_counter()
    children = [
        FORK.Process(target=_appender, args=(path, [w * 1000 + a for a in range(appends)]))
        for w in range(writers)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
    seconds = time.perf_counter() - started
    store = MaskStore.open(path)
    assert sound(path)
    return writers * appends, writers * appends - store.task_count, seconds


def killed_writers(root: Path, repeats: int, kills: int) -> tuple[int, int, int, int]:
    """Every fault step `repeats` times, then `kills` SIGKILLs at random moments; also counts
    the random kills that landed inside a zarr write (an aside `*.partial` file left behind)."""
    path, tried, broken, blocked, mid_write = root / "killed.zarr", 0, 0, 0, 0
    MaskStore.create(path, NET, "topk", 0.5)
    append_random_task(path, 1)
    for step in FAULT_STEPS * repeats:
        target = root / f"new-{tried}.zarr" if step.startswith("create-") else path
        child = FORK.Process(target=_faulty, args=(target, step, 10 + tried))
        child.start()
        child.join()
        tried += 1
        if step.startswith("create-"):
            MaskStore.create(target, NET, "topk", 0.5)  # the next creator must succeed
            broken += not sound(target)
            shutil.rmtree(target)
            continue
        broken += not sound(path)
        started = time.monotonic()
        append_random_task(path, 100_000 + tried)
        blocked += time.monotonic() - started > 5
    for rename in list(range(1, RENAMES_PER_APPEND + 1)) * repeats:  # inside each file write
        child = FORK.Process(target=_killed_at_rename, args=(path, rename, 50_000 + tried))
        child.start()
        child.join()
        tried += 1
        mid_write += any(path.rglob("*.partial"))
        broken += not sound(path)
        append_random_task(path, 150_000 + tried)  # clears the aside file
    rng = random.Random(0)
    for kill in range(kills):
        leftovers = set(path.rglob("*.partial"))
        child = FORK.Process(target=_forever, args=(path, 200_000 + 1000 * kill))
        child.start()
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        tried += 1
        broken += not sound(path)
        mid_write += bool(set(path.rglob("*.partial")) - leftovers)
    started = time.monotonic()
    append_random_task(path, 999_999)
    blocked += time.monotonic() - started > 5
    return tried, broken, blocked, mid_write


def s3_campaign(writers: int, appends: int) -> tuple[int, int, int, int]:
    """On a local S3 server (moto, 127.0.0.1): concurrent writers, then a writer killed at each
    append fault step and the next writer taking the dead one's lock over after the lease."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.get_host_and_port()[1]}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    os.environ.update(env)
    storage.LOCK_LEASE_SECONDS = 1.0  # a dead writer's lock expires after 1 s here
    try:
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("reliability")
        url = "s3://reliability/concurrent.zarr"
        MaskStore.create(url, NET, "topk", 0.5)
        children = [
            FORK.Process(target=_appender, args=(url, [w * 1000 + a for a in range(appends)]))
            for w in range(writers)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join()
        lost = writers * appends - MaskStore.open(url).task_count
        url, kills, broken = "s3://reliability/killed.zarr", 0, 0
        MaskStore.create(url, NET, "topk", 0.5)
        for step in [s for s in FAULT_STEPS if not s.startswith("create-")]:
            child = FORK.Process(target=_faulty, args=(url, step, 10 + kills))
            child.start()
            child.join()
            kills += 1
            broken += not sound(url)
            append_random_task(url, 100 + kills)  # waits out the lease, then takes the lock
            broken += not sound(url)
    finally:
        server.stop()
    return writers * appends, lost, kills, broken


def hostile_stores(root: Path) -> tuple[int, int, int, int]:
    """Every breakage x every command: (runs, tracebacks, wrong answers, code executed)."""
    runner = CliRunner()
    base = root / "sound.zarr"
    MaskStore.create(base, NET, "topk", 0.5)
    for seed in (1, 2, 3):
        append_random_task(base, seed)

    def run(argv: list[str], store: Path):  # noqa: ANN202
        return runner.invoke(app, [a.replace("{store}", str(store)) for a in argv])

    reference = {name: stable(run(argv, base).stdout, base) for name, argv in READERS.items()}
    runs = tracebacks = wrong = executed = 0
    for number, breakage in enumerate(BREAKAGES):
        store = make_hostile(base, root / f"hostile-{number}" / "s.zarr", breakage)
        for name, argv in COMMANDS.items():
            result = run(argv, store)
            runs += 1
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                tracebacks += 1
            elif (
                breakage.kind == "broken"
                and result.exit_code == 0
                and name in READERS
                and stable(result.stdout, store) != reference[name]
            ) or (name == "verify" and (result.exit_code == 0) != (breakage.kind == "sound")):
                wrong += 1
                print(f"wrong answer: {breakage.name} / {name}", file=sys.stderr)
        executed += (store.parent / CANARY).exists()
    return runs, tracebacks, wrong, executed


def read_overhead(root: Path, tasks: int, repeats: int) -> tuple[float, float]:
    """Median seconds to open a store and read every mask, the counts and the records: through
    the bounded reader (GuardedStore) and through a plain zarr LocalStore, interleaved."""
    path = root / "read.zarr"
    MaskStore.create(path, NET, "topk", 0.5)
    for seed in range(tasks):
        append_random_task(path, seed)
    guarded = storage.zarr_store

    def plain(location: str, writable: bool, limits: object = None) -> LocalStore:
        return LocalStore(location, read_only=not writable)

    seconds: dict[str, list[float]] = {"guarded": [], "plain": []}
    try:
        for _ in range(repeats):
            for name, factory in (("guarded", guarded), ("plain", plain)):
                storage.zarr_store = factory
                started = time.perf_counter()
                store = MaskStore.open(path)
                store.read_packed(), store.mask_counts(), store.tasks()
                seconds[name].append(time.perf_counter() - started)
    finally:
        storage.zarr_store = guarded
    return statistics.median(seconds["guarded"]), statistics.median(seconds["plain"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--appends", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--read-tasks", type=int, default=300)
    parser.add_argument("--read-repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        expected, lost, seconds = concurrent_writers(root, args.writers, args.appends)
        tried, broken, blocked, mid_write = killed_writers(root, args.repeats, args.kills)
        runs, tracebacks, wrong, executed = hostile_stores(root)
        guarded, plain = read_overhead(root, args.read_tasks, args.read_repeats)
    s3_tasks, s3_lost, s3_kills, s3_broken = s3_campaign(4, 5)
    print("| campaign | tried | goal | result |")
    print("|---|---|---|---|")
    print(
        f"| concurrent writers ({args.writers} processes x {args.appends} appends, "
        f"{seconds:.1f} s) | {expected} tasks | 0 lost | {lost} lost |"
    )
    print(
        f"| killed writers ({len(FAULT_STEPS)} fault steps and {RENAMES_PER_APPEND} file "
        f"renames x {args.repeats}, {args.kills} random SIGKILLs; {mid_write} kills left a "
        f"half-written file) | {tried} kills "
        f"| 0 broken | {broken} broken, {blocked} next writers blocked > 5 s |"
    )
    print(
        f"| s3:// on a local S3 server: 4 writer processes x 5 appends | {s3_tasks} tasks "
        f"| 0 lost | {s3_lost} lost |"
    )
    print(
        f"| s3:// writers killed at each append step (lease 1 s) | {s3_kills} kills | 0 broken "
        f"| {s3_broken} broken |"
    )
    print(
        f"| hostile stores ({len(BREAKAGES)} stores x {len(COMMANDS)} commands) | {runs} runs "
        f"| 0 tracebacks | {tracebacks} tracebacks, {wrong} wrong answers, {executed} executed |"
    )
    print()
    print(
        f"Reading {args.read_tasks} masks + counts + records (open included), median of "
        f"{args.read_repeats}: bounded reader {guarded * 1000:.0f} ms, plain zarr LocalStore "
        f"{plain * 1000:.0f} ms, ratio {guarded / plain:.2f}x"
    )


if __name__ == "__main__":
    main()
