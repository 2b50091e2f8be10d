"""Hopfield recovery on SplitMNIST (5 tasks x 2 digits), bn-2048-2048, embedded data.

For each seed: train the 5 masks (sign rule, SGD lr 0.1), fold them into Psi, then for every
test batch of 128 images recover a mask (T steps of descent on entropy then energy) and classify
with it. Accuracy with the recovered mask is compared with the true mask on the same batches,
and the recovered mask's Hamming distance to the true one is reported, with and without the
final settling flips, and with Psi rounded to float16 (does half-size storage keep recovery?).

    python benchmarks/hopfield_splitmnist.py --seeds 0,1,2,3,4 --out benchmarks/out/hopfield
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from supsup_cli.format.bits import pack_mask
from supsup_cli.format.header import mask_checksum
from supsup_cli.learn.data import load_task
from supsup_cli.learn.hopfield import (
    DEFAULT_STARTS,
    HopfieldMemory,
    RecoveryConfig,
    attractors,
    classify,
    encode_tasks,
    load_memory,
    lowest_entropy_mask,
    recover_mask,
    settle,
)
from supsup_cli.learn.train import CreationOptions, TrainConfig, predict, train_task
from supsup_cli.model.supermask import split_flat
from supsup_cli.store import MaskStore

MACHINE = "2-core CPU, 24 GiB, no GPU"
SPECS = [f"split:{i}" for i in range(5)]


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def trained_store(path: Path, seed: int, batches: int) -> Path:
    """The seed's store with the 5 tasks trained and encoded (kept from an earlier run)."""
    held = [r.data for r in MaskStore.open(path).tasks()] if MaskStore.exists(path) else []
    if held != SPECS[: len(held)]:
        raise SystemExit(f"{path} holds {held}, not a prefix of {SPECS}")
    for spec in SPECS[len(held) :]:
        outcome = train_task(
            path,
            spec,
            CreationOptions(arch="bn-2048-2048", mask_rule="sign", seed=seed),
            TrainConfig(lr=0.1, batches=batches, optimizer="sgd"),
        )
        log(
            f"seed {seed} {spec}: GG {outcome.result.accuracy:.2%} ({outcome.result.seconds:.0f} s)"
        )
    if MaskStore.open(path).header.hopfield is None:
        encode_tasks(path)
    return path


def matched_task(memory: HopfieldMemory, bits: np.ndarray) -> int | None:
    return memory.fingerprints.get(mask_checksum(pack_mask(bits)))


def recover(memory: HopfieldMemory, x: torch.Tensor, y: torch.Tensor, config: RecoveryConfig):
    """One descent; the raw sign mask, the settled one, and the default answer (the settled mask
    or a minimum of E from random starts, whichever gives the batch the lower entropy)."""
    started = time.perf_counter()
    raw = recover_mask(memory.net, memory.psi, memory.start, x, memory.shapes, config)
    descent = time.perf_counter() - started
    settled = settle(memory.psi, raw.float() * 2 - 1) > 0
    started = time.perf_counter()
    chosen, _ = lowest_entropy_mask(memory, x, settled)
    choosing = time.perf_counter() - started
    out = {"descent_s": descent, "choose_s": choosing}
    for name, mask in (("raw", raw), ("settled", settled), ("chosen", chosen)):
        bits = mask.numpy()
        task = matched_task(memory, bits)
        correct = int((classify(memory, mask, x, task) == y).sum())
        distances = {t: int(np.count_nonzero(p != bits)) for t, p in memory.patterns.items()}
        out[name] = {"matched": task, "correct": correct, "hamming": distances, "bits": bits}
    return out


@torch.no_grad()
def entropies(memory: HopfieldMemory, x: torch.Tensor) -> dict[int, float]:
    """H of the batch under each stored mask (batch statistics, as in the descent): does H rank
    the true mask first? If it does and recovery fails, the descent is to blame, not H."""
    out = {}
    with memory.net.batch_statistics():
        for task, bits in memory.patterns.items():
            masks = split_flat(torch.from_numpy(bits.astype(np.float32)), memory.shapes)
            log_p = memory.net(x, masks).log_softmax(dim=1)  # (n, outputs)
            out[task] = round(-(log_p.exp() * log_p).sum(dim=1).mean().item(), 4)
    return out


def run_seed(
    store: Path, config: RecoveryConfig, batch: int, float16: bool, starts: int
) -> tuple[list[dict], float]:
    """Rows per test batch, and the seconds taken to find the candidate minima of E."""
    started = time.perf_counter()
    memory = load_memory(MaskStore.open(store), starts=starts)
    minima_s = time.perf_counter() - started
    half = None
    if float16:
        psi = memory.psi.half().float()
        found = attractors(psi, starts, 2 * len(memory.tasks)) if starts else None
        half = replace(memory, psi=psi, candidates=found)
    rows = []
    for task, spec in enumerate(SPECS):
        data = load_task(spec)
        true_mask = split_flat(
            torch.from_numpy(memory.patterns[task].astype(np.float32)), memory.shapes
        )
        for first in range(0, len(data.test_y), batch):
            x, y = data.test_x[first : first + batch], data.test_y[first : first + batch]
            if len(x) < 2:
                continue
            memory.net.load_task_stats(memory.stats[task])  # the true task's statistics
            true_correct = int((predict(memory.net, true_mask, x, memory.classes[task]) == y).sum())
            result = recover(memory, x, y, config)
            row = {"task": task, "first": first, "images": len(y), "true_correct": true_correct}
            for name in ("raw", "settled", "chosen"):
                part = result[name]
                row[name] = {
                    "matched": part["matched"],
                    "correct": part["correct"],
                    "hamming_true": part["hamming"][task],
                    "hamming_nearest_other": min(
                        d for t, d in part["hamming"].items() if t != task
                    ),
                }
            row["descent_s"] = round(result["descent_s"], 2)
            row["choose_s"] = round(result["choose_s"], 2)
            row["entropy"] = entropies(memory, x)
            if half is not None:
                half_result = recover(half, x, y, config)
                row["float16"] = {
                    "matched": half_result["settled"]["matched"],
                    "correct": half_result["settled"]["correct"],
                    "same_raw_mask": bool(
                        np.array_equal(half_result["raw"]["bits"], result["raw"]["bits"])
                    ),
                    "same_settled_mask": bool(
                        np.array_equal(half_result["settled"]["bits"], result["settled"]["bits"])
                    ),
                    "same_chosen_mask": bool(
                        np.array_equal(half_result["chosen"]["bits"], result["chosen"]["bits"])
                    ),
                }
            rows.append(row)
            log(
                f"task {task} batch {first}: true {true_correct}/{len(y)}, chosen "
                f"{row['chosen']['correct']} (task {row['chosen']['matched']}), settled "
                f"{row['settled']['correct']} (task {row['settled']['matched']}, Hamming raw "
                f"{row['raw']['hamming_true']}), {row['descent_s']} + {row['choose_s']} s"
            )
    return rows, minima_s


def fixed_point_check(store: Path) -> dict:
    """Are the stored patterns still minima of E when Psi is rounded to float16?"""
    memory = load_memory(MaskStore.open(store))
    out = {}
    for name, psi in (("float32", memory.psi), ("float16", memory.psi.half().float())):
        stable = [
            bool(
                torch.equal(
                    settle(psi, torch.from_numpy(p.astype(np.float32)) * 2 - 1) > 0,
                    torch.from_numpy(p),
                )
            )
            for p in memory.patterns.values()
        ]
        out[name] = sum(stable)
    out["max_abs_rounding"] = float((memory.psi.half().float() - memory.psi).abs().max())
    return out


def table(results: dict[int, list[dict]]) -> str:
    """Markdown: per seed and task, accuracies (%) over the task's test batches and recovery."""
    lines = [
        "| seed | task | batches | true mask | recovered (default) | Δ | descent + settle only "
        "| raw descent | Hamming raw → true | failed (default / settled / raw) "
        "| float16 same default mask |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, rows in results.items():
        for task in range(len(SPECS)):
            part = [r for r in rows if r["task"] == task]
            images = sum(r["images"] for r in part)

            def percent(name: str, rows: list[dict] = part, images: int = images) -> float:
                return 100 * sum(r[name]["correct"] for r in rows) / images

            true = 100 * sum(r["true_correct"] for r in part) / images
            failed = " / ".join(
                str(sum(r[name]["matched"] != task for r in part))
                for name in ("chosen", "settled", "raw")
            )
            hamming = ", ".join(str(r["raw"]["hamming_true"]) for r in part)
            same = (
                f"{sum(r['float16']['same_chosen_mask'] for r in part)}/{len(part)}"
                if "float16" in part[0]
                else "-"
            )
            lines.append(
                f"| {seed} | {task} | {len(part)} | {true:.1f} | {percent('chosen'):.1f} | "
                f"{percent('chosen') - true:+.1f} | {percent('settled'):.1f} | "
                f"{percent('raw'):.1f} | {hamming} | {failed} | {same} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="Store seeds, comma separated.")
    parser.add_argument("--batches", type=int, default=100, help="Training batches per task.")
    parser.add_argument("--steps", type=int, default=30, help="Descent steps T.")
    parser.add_argument("--gamma", type=float, default=1.5e-3, help="Energy weight.")
    parser.add_argument("--batch", type=int, default=128, help="Test images per batch.")
    parser.add_argument("--no-float16", action="store_true", help="Skip the float16 rerun.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument(
        "--starts", type=int, default=DEFAULT_STARTS, help="Random starts for minima of E."
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/hopfield"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    config = RecoveryConfig(steps=args.steps, gamma=args.gamma, settle=False)
    started = time.perf_counter()
    results, checks, minima_s = {}, {}, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        store = trained_store(args.out / f"seed{seed}.zarr", seed, args.batches)
        checks[seed] = fixed_point_check(store)
        results[seed], minima_s[seed] = run_seed(
            store, config, args.batch, not args.no_float16, args.starts
        )
        (args.out / "results.json").write_text(
            json.dumps(
                {
                    "command": " ".join(["python", *sys.argv]),
                    "machine": MACHINE,
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "settings": vars(args) | {"out": str(args.out)},
                    "fixed_points": checks,
                    "minima_seconds": minima_s,
                    "results": results,
                },
                indent=1,
            )
        )
    print(table(results))
    rows = [row for seed_rows in results.values() for row in seed_rows]
    lowest = sum(min(r["entropy"], key=r["entropy"].get) == r["task"] for r in rows)
    exact = sum(r["settled"]["matched"] == r["task"] for r in rows)
    chosen = sum(r["chosen"]["matched"] == r["task"] for r in rows)
    print(f"\nbatches recovered exactly: {chosen}/{len(rows)} default, ", end="")
    print(f"{exact}/{len(rows)} settled, ", end="")
    print(f"{sum(r['raw']['matched'] == r['task'] for r in rows)}/{len(rows)} raw")
    print(f"batches whose H is lowest under the true mask: {lowest}/{len(rows)}")
    print(f"stored patterns that stay minima of E: {checks}")
    print(f"seconds to find the minima of E per store: {minima_s}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
