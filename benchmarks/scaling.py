"""Past one process, measured: tasks per hour of `train-tasks` with 1 and 2 workers, and the time
of one DDP training step with 1 and 2 ranks (gloo on the CPU, nccl with --device cuda).

Both in the same run, on lenet-300-100 and permuted embedded digits, batch 128 (the global batch
under DDP), one torch thread per process. Tasks per hour count the whole run as a user sees it
(starting the workers included); the steady rate is workers / seconds per task in a worker,
what a long run approaches.

    python benchmarks/scaling.py [--tasks 4] [--batches 200] [--ddp-batches 100] [--json]
    python benchmarks/scaling.py --devices cuda:0,cuda:1 --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one thread per process

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from supsup_cli.format.architectures import NetConfig  # noqa: E402
from supsup_cli.learn.data import load_task  # noqa: E402
from supsup_cli.learn.distributed import RankInfo, process_group  # noqa: E402
from supsup_cli.learn.many_tasks import parse_devices, train_tasks  # noqa: E402
from supsup_cli.learn.train import (  # noqa: E402
    CreationOptions,
    TrainConfig,
    initial_scores,
    train_mask,
)
from supsup_cli.model.nets import build_net  # noqa: E402

WARMUP_STEPS = 10  # steps left out of the step time (first calls, allocator, DDP buckets)


def tasks_per_hour(workers: int, tasks: int, batches: int, devices: tuple[str, ...]) -> dict:
    """One train-tasks run of `tasks` permutations into a fresh store."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = train_tasks(
            str(Path(folder) / "s.zarr"),
            f"permuted:1..{tasks}",
            CreationOptions(),
            TrainConfig(batches=batches),
            workers,
            devices,
        )
        seconds = time.perf_counter() - started
    if summary.failed:
        raise SystemExit(f"{len(summary.failed)} task(s) failed: {summary.failed[0].error}")
    per_task = statistics.mean(r.seconds for r in summary.landed)
    return {
        "workers": workers,
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "tasks_per_hour": round(tasks / seconds * 3600),
        "seconds_per_task": round(per_task, 2),
        "steady_tasks_per_hour": round(min(workers, tasks) / per_task * 3600),
    }


def _ddp_rank(rank: int, world: int, port: int, steps: int, device: str, out: Any) -> None:
    """One rank of a DDP run (spawned): trains `steps` batches; rank 0 sends its step times."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    stamps: list[float] = []
    with process_group(RankInfo(rank, world, rank), torch.device(device)) as group:
        config = NetConfig("lenet-300-100")
        net = build_net(config, group.device)
        scores = initial_scores(config.mask_shapes, 0, None)
        train_mask(
            net,
            load_task("permuted:1"),
            "topk",
            0.5,
            TrainConfig(batches=steps),
            scores,
            group.device,
            lambda done, total, status="": stamps.append(time.perf_counter()),
            group,
        )
    if rank == 0:
        out.put(stamps)


def step_time(world: int, steps: int, device: str) -> dict:
    """Median seconds per training step with `world` DDP ranks (after the warm-up steps)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    mp.start_processes(
        _ddp_rank, (world, port, steps, device, out), nprocs=world, start_method="spawn"
    )
    stamps = out.get()
    gaps = [b - a for a, b in zip(stamps[WARMUP_STEPS:], stamps[WARMUP_STEPS + 1 :], strict=False)]
    seconds = statistics.median(gaps)
    return {
        "world_size": world,
        "device": device,
        "steps": steps,
        "ms_per_step": round(seconds * 1000, 2),
        "images_per_s": round(128 / seconds),
    }


def markdown(workers: list[dict], ddp: list[dict]) -> str:
    lines = [
        "| train-tasks | tasks | wall s | tasks/hour (wall) | s per task | tasks/hour (steady) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in workers:
        lines.append(
            f"| {row['workers']} worker(s) | {row['tasks']} | {row['seconds']} | "
            f"{row['tasks_per_hour']:,} | {row['seconds_per_task']} | "
            f"{row['steady_tasks_per_hour']:,} |"
        )
    first, last = workers[0], workers[-1]
    wall = last["tasks_per_hour"] / first["tasks_per_hour"]
    steady = last["steady_tasks_per_hour"] / first["steady_tasks_per_hour"]
    lines += [
        f"\nratio {last['workers']} workers / 1 worker: {wall:.2f}x tasks per hour (wall, workers' "
        f"start included), {steady:.2f}x (steady: workers / seconds per task)\n",
        "| DDP (global batch 128) | device | ms per step | images/s |",
        "|---|---|---:|---:|",
    ]
    for row in ddp:
        lines.append(
            f"| world size {row['world_size']} | {row['device']} | {row['ms_per_step']} | "
            f"{row['images_per_s']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, help="tasks per train-tasks run")
    parser.add_argument("--batches", type=int, default=200, help="batches per task")
    parser.add_argument("--workers", type=int, default=2, help="the most workers measured")
    parser.add_argument("--devices", default=None, help="train-tasks --devices (cuda:0,...)")
    parser.add_argument("--ddp-batches", type=int, default=100, help="steps per DDP run")
    parser.add_argument("--world", type=int, default=2, help="the largest DDP world size")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl) for DDP")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    args = parser.parse_args()
    torch.set_num_threads(1)  # train-tasks gives each worker cores // workers threads: one here
    devices = parse_devices(args.devices)
    counts = sorted({1, args.workers})
    workers = [tasks_per_hour(n, args.tasks, args.batches, devices) for n in counts]
    ddp = [step_time(n, args.ddp_batches, args.device) for n in sorted({1, args.world})]
    if args.json:
        payload = {
            "command": " ".join(["python", *sys.argv]),
            "cpus": len(os.sched_getaffinity(0)),
            "load_average": os.getloadavg()[0],
            "torch": torch.__version__,
            "train_tasks": workers,
            "ddp": ddp,
        }
        print(json.dumps(payload, indent=2))
    else:
        print(markdown(workers, ddp))
        print(f"\n{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
