"""The conformance corpus of the supsup store format: small golden stores, made bit for bit the
same on every run, and the hostile stores of the test suite, as folders a reader written in any
language can test itself against.

    python formats/conformance/make_corpus.py OUT_DIR          # OUT_DIR/golden, OUT_DIR/hostile
    python formats/conformance/make_corpus.py OUT_DIR --check  # golden files against golden.sha256

Golden stores are written with the library (supsup_cli.store.MaskStore) from fixed content:
masks from seeded numpy generators, fixed records and times. `golden.sha256` (beside this
script) pins the sha256 of every file they hold, in `sha256sum` format. The hostile stores are
tests/hostile_stores.py's breakages applied to a copy of the golden store `lenet-3tasks.zarr`;
OUT_DIR/hostile/README.md says what a conforming reader must do with each.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from supsup_cli.format.architectures import NetConfig  # noqa: E402
from supsup_cli.format.rules import kept_count  # noqa: E402
from supsup_cli.store import MaskStore, layout  # noqa: E402

PINNED = Path(__file__).with_name("golden.sha256")
CREATED = "2026-01-01T00:00:00+00:00"
DENSITY = 0.1


def task_mask(net: NetConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores from a seeded generator and the top-k mask of each site (density 0.1)."""
    scores = np.random.default_rng(seed).standard_normal(net.mask_bits).astype(np.float32)
    bits = np.zeros(net.mask_bits, dtype=bool)
    start = 0
    for shape in net.mask_shapes:
        size = math.prod(shape)
        site = np.abs(scores[start : start + size])
        bits[start + np.argsort(-site, kind="stable")[: kept_count(size, DENSITY)]] = True
        start += size
    return bits, scores


def append(store: MaskStore, task: int, seed: int, **extra: object) -> None:
    bits, scores = task_mask(store.net, seed)
    store.append_task(
        bits,
        scores,
        data=f"permuted:{task + 1}",
        classes=list(range(10)),
        accuracy=0.5 + task / 100,
        train={"lr": 0.1, "batches": 10},
        created=CREATED,
        seconds=1.0,
        **extra,  # type: ignore[arg-type]
    )


def lenet(path: Path, tasks: int, version: int = 1, keep_scores: bool = False) -> MaskStore:
    """Version 1 (the older layout, both per-weight arrays) unless `version` 4 is asked for."""
    net = NetConfig("lenet-300-100", outputs=10, seed=0)
    store = MaskStore.create(path, net, "topk", DENSITY, keep_scores=keep_scores, version=version)
    for task in range(tasks):
        append(store, task, seed=task)
    return store


def lenet_replaced(path: Path) -> None:
    """Version 2: task 1's mask replaced (and one audit log row with the replace)."""
    store = lenet(path, 3)
    bits, scores = task_mask(store.net, seed=100)
    log = {"batch": 0, "segment": 0, "data": "permuted:2", "decision": "continue", "mask": 1}
    log |= {"p": 0.9, "threshold": 0.25, "candidates": 5, "time": CREATED}
    store.replace_task(1, bits, scores, accuracy=0.75, train={"lr": 0.1}, seconds=2.0, log=[log])


def lenet_packed(path: Path) -> None:
    """Version 3: a 2-task store packed into a copy without its raw masks."""
    source = lenet(path.with_name(path.name + ".source"), 2)
    source.pack(codec="range-site", out=path, drop_raw=True)
    shutil.rmtree(source.path)


def lenet_v4_packed(path: Path) -> None:
    """Version 4 packed without its raw masks: it stays version 4 (no per-weight arrays)."""
    source = lenet(path.with_name(path.name + ".source"), 2, version=4)
    source.pack(codec="range-site-prev", out=path, drop_raw=True)
    shutil.rmtree(source.path)


@contextmanager
def stored_counts_from(tasks: int) -> Iterator[None]:
    """Writers start to store mask counts at `tasks` tasks (256 in use): small golden stores."""
    usual = layout.STORED_COUNTS_TASKS
    layout.STORED_COUNTS_TASKS = tasks  # type: ignore[misc]
    try:
        yield
    finally:
        layout.STORED_COUNTS_TASKS = usual  # type: ignore[misc]


def bn(path: Path, tasks: int = 2, version: int = 1) -> None:
    """bn-2048-2048: channel masks (4,096 bits) and per-task BatchNorm statistics."""
    net = NetConfig("bn-2048-2048", outputs=10, seed=7)
    store = MaskStore.create(path, net, "topk", DENSITY, version=version)
    for task in range(tasks):
        stats = np.random.default_rng(50 + task).random(net.stats_size).astype(np.float32)
        append(store, task, seed=10 + task, task_stats=stats)


def bn_counts(path: Path) -> None:
    """Version 4 whose counts array a writer made at its second task (as at 256 in use)."""
    with stored_counts_from(2):
        bn(path, tasks=3, version=4)


GOLDEN: dict[str, Callable[[Path], object]] = {
    "lenet-2tasks.zarr": lambda p: lenet(p, 2),
    "lenet-3tasks.zarr": lambda p: lenet(p, 3),
    "lenet-v2-replaced.zarr": lenet_replaced,
    "lenet-v3-packed.zarr": lenet_packed,
    "bn-2tasks.zarr": bn,
    "lenet-v4-2tasks.zarr": lambda p: lenet(p, 2, version=4),
    "lenet-v4-scores.zarr": lambda p: lenet(p, 2, version=4, keep_scores=True),
    "lenet-v4-packed.zarr": lenet_v4_packed,
    "bn-v4-counts.zarr": bn_counts,
}


def make_golden(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, make in GOLDEN.items():
        make(out / name)


def digests(golden: Path) -> str:
    """`sha256sum` lines of every file of the golden stores (paths relative to `golden`)."""
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(golden).as_posix()}"
        for name in GOLDEN
        for path in sorted((golden / name).rglob("*"))
        if path.is_file()
    ]
    return "\n".join(lines) + "\n"


KINDS = {
    "broken": "refuse it: opening it, or reading the damaged part, is an error naming the "
    "problem (a reader that never reads the damaged part answers as on the sound store); "
    "a full check (R13) reports it",
    "forged": "the records parse but lie: a full check (R13) reports it, and reading the lying "
    "task's mask is refused (its sha256 differs, R9)",
    "sound": "still a valid store (leftovers the format allows, or damage in bytes readers "
    "ignore): everything reads, and a full check passes",
}


def make_hostile(out: Path, sound: Path, only: set[str] | None = None) -> None:
    """Every breakage (or those named in `only`) as a store folder, and the README."""
    from hostile_stores import BREAKAGES, make_hostile

    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Hostile stores",
        "",
        f"Each folder is a copy of `golden/{sound.name}` damaged in one way (made by",
        "`tests/hostile_stores.py`). Opening any of them MUST NOT execute anything, and no read",
        "may allocate more than the format's limits allow (reader rule R2). What a conforming",
        "reader must then do depends on the kind:",
        "",
        *(f"- **{kind}**: {what}." for kind, what in KINDS.items()),
        "",
        "Some are not plain files: `mask-chunk-fifo` holds a FIFO, `mask-chunk-devzero` a symlink",
        "to /dev/zero, `mask-chunk-10-gb-sparse` a sparse file of 10 GB (little disk).",
        "",
        "| store | kind |",
        "|---|---|",
    ]
    for breakage in BREAKAGES:
        if only is not None and breakage.name not in only:
            continue
        make_hostile(sound, out / f"{breakage.name}.zarr", breakage)
        lines.append(f"| `{breakage.name}.zarr` | {breakage.kind} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an empty or new folder")
    parser.add_argument("--check", action="store_true", help="compare with golden.sha256")
    parser.add_argument("--no-hostile", action="store_true", help="golden stores only")
    args = parser.parse_args()
    make_golden(args.out / "golden")
    if args.check:
        same = digests(args.out / "golden") == PINNED.read_text()
        print("golden stores match golden.sha256" if same else "golden stores DIFFER")
        if not same:
            return 1
    if not args.no_hostile:
        make_hostile(args.out / "hostile", args.out / "golden" / "lenet-3tasks.zarr")
    return 0


if __name__ == "__main__":
    sys.exit(main())
