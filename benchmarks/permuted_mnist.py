"""PermutedMNIST in scenario GNu as in the SupSup paper (250 tasks), at this machine's scale.

LeNet 300-100, sign-rule masks (GNu), 100 outputs (90 superfluous, for the G objective), RMSprop
lr 1e-4, batches of 128. Stage `train` learns permuted:1..N into a store (resumable); stage `eval`
writes one `supsup eval --json` report per run (GG; GNu one-shot with H and G, single image and
batches of 128) re-evaluated at growing task counts, then prints the tables for RESULTS.md.

    python benchmarks/permuted_mnist.py --tasks 250            # full run (see RESULTS.md)
    python benchmarks/permuted_mnist.py --quick --out DIR      # seconds; run by the tests
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
PAPER_SINGLE = "94.91% (250 tasks, one-shot, single image, 60k MNIST)"
PAPER_G_VS_H = "G >= H at many tasks (paper fig. 12)"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=250, help="permuted tasks (permuted:1..N)")
    parser.add_argument("--batches", type=int, default=1000, help="training batches per task")
    parser.add_argument("--outputs", type=int, default=100, help="output neurons (>10 for G)")
    parser.add_argument(
        "--single-images",
        type=int,
        default=10,
        help="test images per task for single-image inference (one query per image is slow)",
    )
    parser.add_argument(
        "--checkpoints", default="10,25,50,100,150,200", help="task counts re-evaluated"
    )
    parser.add_argument(
        "--single-checkpoints", default="25,100", help="task counts re-evaluated, single images"
    )
    parser.add_argument("--out", type=Path, default=HERE / "out" / "permuted", help="folder")
    parser.add_argument("--stage", choices=("train", "eval", "all"), default="all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument("--data-root", type=Path, default=None, help="full MNIST (torchvision)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--runs", default=None, help="evaluate only these runs (comma list)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.batches, args.single_images = 3, 150, 8
        args.checkpoints, args.single_checkpoints = "1,2", "1"
    return args


def runs(args: argparse.Namespace) -> list[Run]:
    """GG, then GNu one-shot: batches of 128 and single images, each with H and with G."""
    checkpoints = parse_counts(args.checkpoints)
    single = parse_counts(args.single_checkpoints)  # single images cost the most: fewer points
    images = 128 if args.quick else None

    def gnu(objective: str, batch: int, **more) -> EvalSettings:
        return EvalSettings("GNu", "one-shot", objective, batch, **more)

    return [
        Run("gg", EvalSettings("GG", checkpoints=checkpoints), "task given: upper bound"),
        Run("gnu-oneshot-H-batch128", gnu("H", 128, images=images, checkpoints=checkpoints)),
        Run(
            "gnu-oneshot-G-batch128",
            gnu("G", 128, images=images, checkpoints=checkpoints),
            PAPER_G_VS_H,
        ),
        Run(
            "gnu-oneshot-H-single",
            gnu("H", 1, images=args.single_images, checkpoints=single),
            PAPER_SINGLE,
        ),
        Run(
            "gnu-oneshot-G-single",
            gnu("G", 1, images=args.single_images, checkpoints=single),
            PAPER_G_VS_H,
        ),
    ]


def main(argv: list[str]) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    store = args.out / "store.zarr"
    specs = [f"permuted:{i}" for i in range(1, args.tasks + 1)]
    creation = CreationOptions(arch="lenet-300-100", outputs=args.outputs, mask_rule="sign")
    run_benchmark(
        args,
        store,
        specs,
        creation,
        runs(args),
        f"PermutedMNIST, lenet-300-100, {args.outputs} outputs, sign rule, {args.tasks} tasks, "
        f"{args.batches} batches of 128 per task",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
