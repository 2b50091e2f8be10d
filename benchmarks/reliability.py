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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile_stores import (  # noqa: E402
    BREAKAGES,
    CANARY,
    READERS,
    WRITERS,
    make_hostile,
    stable,
)

from supsup_cli.cli import app  # noqa: E402
from supsup_cli.nets import NetConfig  # noqa: E402
from supsup_cli.store import FAULT_ENV, FAULT_STEPS, MaskStore  # noqa: E402

NET = NetConfig("lenet-300-100", 10, 0)
FORK = multiprocessing.get_context("fork")
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


def killed_writers(root: Path, repeats: int, kills: int) -> tuple[int, int, int]:
    """Every fault step `repeats` times, then `kills` SIGKILLs at random moments."""
    path, tried, broken, blocked = root / "killed.zarr", 0, 0, 0
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
    rng = random.Random(0)
    for kill in range(kills):
        child = FORK.Process(target=_forever, args=(path, 200_000 + 1000 * kill))
        child.start()
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        tried += 1
        broken += not sound(path)
    started = time.monotonic()
    append_random_task(path, 999_999)
    blocked += time.monotonic() - started > 5
    return tried, broken, blocked


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--appends", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kills", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        expected, lost, seconds = concurrent_writers(root, args.writers, args.appends)
        tried, broken, blocked = killed_writers(root, args.repeats, args.kills)
        runs, tracebacks, wrong, executed = hostile_stores(root)
    print("| campaign | tried | goal | result |")
    print("|---|---|---|---|")
    print(
        f"| concurrent writers ({args.writers} processes x {args.appends} appends, "
        f"{seconds:.1f} s) | {expected} tasks | 0 lost | {lost} lost |"
    )
    print(
        f"| killed writers ({len(FAULT_STEPS)} fault steps x {args.repeats}, "
        f"{args.kills} random SIGKILLs) | {tried} kills | 0 broken | {broken} broken, "
        f"{blocked} next writers blocked > 5 s |"
    )
    print(
        f"| hostile stores ({len(BREAKAGES)} stores x {len(COMMANDS)} commands) | {runs} runs "
        f"| 0 tracebacks | {tracebacks} tracebacks, {wrong} wrong answers, {executed} executed |"
    )


if __name__ == "__main__":
    main()
