"""RotatedMNIST in scenario GNu as in the SupSup paper (36 tasks of 10°), at this machine's scale.

FC 1024-1024, sign-rule masks (GNu), 200 outputs (190 superfluous, for G), RMSprop lr 1e-4,
batches of 128. Stage `train` learns rotated:0..350:10 into a store (resumable); stage `eval`
writes one `supsup eval --json` report per run (GG; GNu one-shot and binary on batches of 128,
as the paper's "full batch"; one-shot on single images), re-evaluated at growing task counts.

    python benchmarks/rotated_mnist.py --out benchmarks/out/rotated1000   # RESULTS.md
    python benchmarks/rotated_mnist.py --quick --out DIR       # seconds; run by the tests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import Run, run_benchmark

from supsup_cli.learn.evaluation import EvalSettings, parse_counts
from supsup_cli.learn.train import CreationOptions

HERE = Path(__file__).resolve().parent
PAPER_FULL_BATCH = "near the upper bound (paper fig. 8, batch 128; no number in our notes)"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=36, help="rotations 0, 10, ... degrees")
    parser.add_argument("--step", type=int, default=10, help="degrees between tasks")
    parser.add_argument("--batches", type=int, default=1000, help="training batches per task")
    parser.add_argument("--outputs", type=int, default=200, help="output neurons (>10 for G)")
    parser.add_argument("--single-images", type=int, default=20, help="per task, single images")
    parser.add_argument("--checkpoints", default="6,12,18,24,30", help="task counts re-evaluated")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "rotated", help="folder")
    parser.add_argument("--stage", choices=("train", "eval", "all"), default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument("--data-root", type=Path, default=None, help="full MNIST (torchvision)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--runs", default=None, help="evaluate only these runs (comma list)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.step, args.batches, args.single_images = 3, 120, 60, 8
        args.checkpoints = "2"
    return args


def runs(args: argparse.Namespace) -> list[Run]:
    """GG; GNu on batches of 128 (one-shot H and G, binary H); one-shot H on single images."""
    checkpoints = parse_counts(args.checkpoints)
    images = 128 if args.quick else None

    def gnu(method: str, objective: str, batch: int, **more) -> EvalSettings:
        return EvalSettings("GNu", method, objective, batch, **more)

    return [
        Run("gg", EvalSettings("GG", checkpoints=checkpoints), "task given: upper bound"),
        Run(
            "gnu-oneshot-H-batch128",
            gnu("one-shot", "H", 128, images=images, checkpoints=checkpoints),
            PAPER_FULL_BATCH,
        ),
        Run(
            "gnu-oneshot-G-batch128",
            gnu("one-shot", "G", 128, images=images, checkpoints=checkpoints),
        ),
        Run(
            "gnu-binary-H-batch128",
            gnu("binary", "H", 128, images=images, checkpoints=checkpoints),
            "the paper's method here (binary, full batch)",
        ),
        Run("gnu-oneshot-H-single", gnu("one-shot", "H", 1, images=args.single_images)),
    ]


def main(argv: list[str]) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    store = args.out / "store.zarr"
    specs = [f"rotated:{args.step * i}" for i in range(args.tasks)]
    creation = CreationOptions(arch="fc-1024-1024", outputs=args.outputs, mask_rule="sign")
    run_benchmark(
        args,
        store,
        specs,
        creation,
        runs(args),
        f"RotatedMNIST, fc-1024-1024, {args.outputs} outputs, sign rule, {args.tasks} tasks of "
        f"{args.step} degrees, {args.batches} batches of 128 per task",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
