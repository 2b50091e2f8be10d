"""What the store layout costs: one append (a random mask, no training) on copies of big stores,
and their file counts. Baseline in the same run: the store given first.

    python benchmarks/store_layout.py benchmarks/out/taskid-k2500-o500.zarr \\
        benchmarks/out/taskid-k2500-o500-rows.zarr        # stores made by benchmarks/taskid.py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import append_random_mask

from supsup_cli.store import MaskStore


def append_times(source: Path, appends: int) -> tuple[float, int, int]:
    """Median seconds of an append to a copy of `source`, its row_chunk, and its file count."""
    with tempfile.TemporaryDirectory() as work:
        path = shutil.copytree(source, Path(work) / "s.zarr")
        store = MaskStore.open(path, writable=True)
        rng = np.random.default_rng(1)
        times = []
        for index in range(appends):
            started = time.perf_counter()
            append_random_mask(store, rng, f"permuted:{100_000 + index}")
            times.append(time.perf_counter() - started)
        files = sum(1 for p in Path(path).rglob("*") if p.is_file())
        return float(np.median(times)), store.header.row_chunk, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", type=Path)
    parser.add_argument("--appends", type=int, default=20)
    args = parser.parse_args()
    print("| store | tasks | rows per chunk | files | append (ms) | vs first |")
    print("|---|---|---|---|---|---|")
    base = None
    for source in args.stores:
        seconds, rows, files = append_times(source, args.appends)
        base = base or seconds
        tasks = MaskStore.open(source).task_count
        print(
            f"| {source.name} | {tasks:,} | {rows} | {files:,} | {1000 * seconds:.1f} | "
            f"{seconds / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
