"""Accuracy of top-k supermasks at falling densities on permuted tasks: the size/accuracy trade-off.

Trains `--tasks` permuted tasks per density (same specs, same score seeds) with the library's
`train_task`, then prints accuracy per density next to the information floor H2(density) bits per
weight, i.e. what `supsup pack` can store a mask of that density in.

    python benchmarks/density_sweep.py --out /tmp/sweep [--densities 0.5,0.2,0.1,0.05]
        [--tasks 3] [--batches 1000]

The stores are kept under --out (one per density) so `benchmarks/pack.py` can measure them.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from supsup_cli.learn.train import CreationOptions, TrainConfig, train_task
from supsup_cli.store import MaskStore


def binary_entropy(p: float) -> float:
    """H2(p) in bits: the fewest bits per weight a mask of density p can be stored in."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the stores.")
    parser.add_argument("--densities", default="0.5,0.2,0.1,0.05", help="Comma-separated.")
    parser.add_argument("--tasks", type=int, default=3, help="Permuted tasks per density.")
    parser.add_argument("--batches", type=int, default=1000, help="Training batches per task.")
    args = parser.parse_args()
    densities = [float(d) for d in args.densities.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for density in densities:
        path = args.out / f"density-{density}.zarr"
        done = MaskStore.open(path).task_count if MaskStore.exists(path) else 0
        started = time.perf_counter()
        for task in range(done + 1, args.tasks + 1):  # resumable: a killed sweep keeps its tasks
            train_task(
                path,
                f"permuted:{task}",
                CreationOptions(density=density),
                TrainConfig(batches=args.batches),
            )
        accuracies = [r.accuracy for r in MaskStore.open(path).tasks()[: args.tasks]]
        rows.append((density, accuracies, time.perf_counter() - started))
    print(f"lenet-300-100, 10 outputs, embedded MNIST 4k/1k, {args.batches} batches of 128/task")
    print(f"| density | H2 bits/weight | accuracy per task | mean | vs density {densities[0]} |")
    print("|---|---|---|---|---|")
    baseline = statistics.mean(rows[0][1])
    for density, accuracies, _ in rows:
        mean = statistics.mean(accuracies)
        per_task = ", ".join(f"{a:.1%}" for a in accuracies)
        print(
            f"| {density} | {binary_entropy(density):.3f} | {per_task} | {mean:.2%} "
            f"| {mean - baseline:+.2%} |"
        )


if __name__ == "__main__":
    main()
