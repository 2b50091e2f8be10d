"""Bits per weight of packed masks against H2(density), and the time to pack 100 tasks.

    python benchmarks/pack.py sizes STORE [STORE ...]   # every codec + zstd/lzma baselines
    python benchmarks/pack.py speed [--tasks 100]       # pack, read and verify a 100-task store

`sizes` measures trained stores (e.g. those benchmarks/density_sweep.py leaves): per store, mean
bits per weight per task of each registered codec; of zstd and lzma (numcodecs) on the bit-packed
bytes, general-purpose baselines; of the raw bit-packed mask (1 bit) and of the reference code's
fp32 masks (32 bits); next to H2(density), the floor for i.i.d. bits at that density, and WSN's
reported ~0.22 bit/weight/task. `speed` appends synthetic top-k masks (exact per-layer density,
random places: what the codec sees of a real top-k mask) to a lenet-300-100 store and times
`pack`, `pack --out --drop-raw`, reading every mask back from both stores, and `verify`.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from numcodecs import LZMA, Zstd

from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.bits import unpack_mask
from supsup_cli.format.codecs import CODECS, binary_entropy, encode_packed, get_codec
from supsup_cli.format.rules import kept_count
from supsup_cli.store import MaskStore

REFERENCE_FP32_BITS = 32.0  # the reference code stacks fp32 masks
WSN_REPORTED_BITS = 0.22  # WSN's Huffman-coded sparse masks, as reported


def sizes(paths: list[Path]) -> None:
    """One row per store: mean bits/weight/task of every codec and baseline."""
    codecs = list(CODECS)
    header = ["store", "rule", "tasks", "density", "H2"] + codecs + ["zstd-22", "lzma-9"]
    print("| " + " | ".join(header) + " | raw | fp32 ref | WSN reported |")
    print("|" + "---|" * (len(header) + 3))
    for path in paths:
        store = MaskStore.open(path)
        rows = store.read_packed()  # (k, B)
        d = store.header.mask_bits
        sites = [math.prod(s) for s in store.net.mask_shapes]
        density = float(unpack_mask(rows, d).mean())  # measured: sign masks have no target
        cells = [
            f"{path.parent.name}/{path.name}",
            store.header.mask_rule,
            str(len(rows)),
            f"{density:.4f}",
            f"{binary_entropy(density):.4f}",
        ]
        for name in codecs:
            blobs = encode_packed(get_codec(name), list(rows), sites)
            cells.append(f"{statistics.mean(8 * len(b) / d for b in blobs):.4f}")
        for baseline in (Zstd(level=22), LZMA(preset=9)):
            encoded = [len(baseline.encode(row.tobytes())) for row in rows]
            cells.append(f"{statistics.mean(8 * n / d for n in encoded):.4f}")
        cells += ["1.0000", f"{REFERENCE_FP32_BITS:.0f}", f"{WSN_REPORTED_BITS}"]
        print("| " + " | ".join(cells) + " |")


def synthetic_store(path: Path, tasks: int, density: float, seed: int) -> MaskStore:
    """A lenet-300-100 store of `tasks` top-k masks at random places, appended by the store API."""
    net = NetConfig("lenet-300-100", outputs=10, seed=0)
    store = MaskStore.create(path, net, "topk", density)
    rng = np.random.default_rng(seed)
    for task in range(tasks):
        parts = []
        for shape in net.mask_shapes:
            scores = rng.random(math.prod(shape))
            kept = kept_count(scores.size, density)
            parts.append(scores >= np.partition(scores, -kept)[-kept])
        bits = np.concatenate(parts)  # (D,) bool
        store.append_task(
            bits,
            torch.zeros(bits.size),
            data=f"permuted:{task + 1}",
            classes=range(10),
            accuracy=None,
            train={"synthetic": True},
            created="",
            seconds=None,
        )
    return store


def timed(function, repeats: int = 3) -> tuple[float, object]:
    """Best wall time of `repeats` calls (the machine is shared) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def speed(tasks: int, density: float, source: Path | None) -> None:
    """Pack, read back and verify a store of `tasks` lenet-300-100 masks (synthetic, or a copy of
    a trained store); ratios against reading the raw masks."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if source is None:
            store = synthetic_store(root / "raw.zarr", tasks, density, seed=0)
            what = f"{tasks} synthetic top-k masks at density {density}"
        else:
            shutil.copytree(source, root / "raw.zarr", ignore=shutil.ignore_patterns(".supsup*"))
            store = MaskStore.open(root / "raw.zarr")
            tasks = store.task_count
            what = f"{tasks} trained {store.header.mask_rule} masks ({source})"
        raw_bytes = store.stored_bytes()
        raw_read, raw_rows = timed(lambda: MaskStore.open(store.path).read_packed())
        raw_verify, _ = timed(lambda: MaskStore.open(store.path).verify(), repeats=1)
        pack_site, _ = timed(lambda: MaskStore.open(store.path).pack("range-site"))
        pack_auto, result = timed(lambda: MaskStore.open(store.path).pack("auto"))
        outs = iter(range(100))
        pack_out, _ = timed(
            lambda: MaskStore.open(store.path).pack(
                "auto", out=root / f"small{next(outs)}.zarr", drop_raw=True
            )
        )
        small = MaskStore.open(root / "small0.zarr")
        small_read, small_rows = timed(lambda: MaskStore.open(small.path).read_packed())
        small_verify, problems = timed(lambda: MaskStore.open(small.path).verify(), repeats=1)
        assert np.array_equal(small_rows, raw_rows) and problems == []
        one_read, _ = timed(lambda: MaskStore.open(small.path).read_mask(tasks - 1))
        print(f"{store.net.arch}, {what}; auto chose {result.codec}")
        print("| step | seconds | vs reading the raw store |")
        print("|---|---|---|")
        for name, seconds in (
            ("read all raw masks", raw_read),
            (f"pack {tasks} tasks in place, --codec range-site", pack_site),
            (f"pack {tasks} tasks in place, --codec auto (both codecs)", pack_auto),
            (f"pack {tasks} tasks --out --drop-raw (auto)", pack_out),
            ("read all masks, raw dropped (decode)", small_read),
            ("read the last mask, raw dropped", one_read),
            ("verify, raw store", raw_verify),
            ("verify, raw dropped", small_verify),
        ):
            print(f"| {name} | {seconds:.3f} | {seconds / raw_read:.1f}x |")
        bits = statistics.mean(t.bits_per_weight for t in result.tasks)
        bound = statistics.mean(t.bound for t in result.tasks)
        print(
            f"bits/weight {bits:.4f} vs H2 {bound:.4f}; bytes on disk "
            f"{raw_bytes:,} raw -> {small.stored_bytes():,} packed, raw dropped"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    size_parser = commands.add_parser("sizes", help="bits/weight of trained stores")
    size_parser.add_argument("stores", nargs="+", type=Path)
    speed_parser = commands.add_parser("speed", help="time packing a synthetic store")
    speed_parser.add_argument("--tasks", type=int, default=100)
    speed_parser.add_argument("--density", type=float, default=0.1)
    speed_parser.add_argument("--store", type=Path, help="time a copy of this store instead")
    args = parser.parse_args()
    if args.command == "sizes":
        sizes(args.stores)
    else:
        speed(args.tasks, args.density, args.store)


if __name__ == "__main__":
    main()
