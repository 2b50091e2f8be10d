"""Shared pieces of the paper benchmarks: resumable training of a task sequence, run metadata."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from supsup_cli.learn.evaluation import EvalSettings, evaluate_store, store_identity
from supsup_cli.learn.train import CreationOptions, TrainConfig, train_task
from supsup_cli.store import MaskStore

MACHINE = "2-core CPU, 24 GiB, no GPU"
EMBEDDED_NOTE = "embedded 5,000 MNIST digits (4,000 train / 1,000 test); the paper used 60,000"


def log(message: str) -> None:
    """Progress of a long run on stderr, with a timestamp (stdout carries the tables)."""
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def train_sequence(
    store: Path,
    specs: Sequence[str],
    creation: CreationOptions,
    config: TrainConfig,
    data_root: Path | None = None,
    device: str = "cpu",
) -> float:
    """Train the specs that the store does not hold yet, in order; returns seconds spent.

    Resumable: a store that already holds a prefix of the sequence keeps it, so a long run that
    was stopped goes on where it stopped. A store holding other tasks is refused.
    """
    done = MaskStore.open(store).tasks() if MaskStore.exists(store) else []
    held = [r.data for r in done]
    if held != list(specs[: len(held)]):
        raise SystemExit(f"{store} holds {held[:3]}..., not a prefix of this benchmark's tasks")
    started = time.perf_counter()
    for spec in specs[len(held) :]:
        outcome = train_task(store, spec, creation, config, data_root, device)
        log(
            f"task {outcome.record.index} <- {spec}: GG {outcome.result.accuracy:.2%} "
            f"({outcome.result.seconds:.1f} s)"
        )
    return time.perf_counter() - started


def run_metadata(argv: Sequence[str]) -> dict[str, Any]:
    """What a results file needs to be reproduced: command, machine, date, versions, threads."""
    return {
        "command": " ".join(["python", *argv]),
        "machine": MACHINE,
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a results file whole (write aside, then rename), so a stopped run leaves no stub."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)


@dataclass(frozen=True)
class Run:
    """One evaluation of a benchmark: a file name and what `supsup eval` measures."""

    name: str
    settings: EvalSettings
    paper: str = ""


def eval_command_line(store: Path, settings: EvalSettings, data_root: Path | None) -> str:
    """The `supsup eval` invocation that measures the same thing as `evaluate_store` here."""
    words = ["supsup", "eval", str(store), "--scenario", settings.scenario]
    if settings.scenario == "GNu":
        words += ["--method", settings.method, "--objective", settings.objective]
        words += ["--batch", str(settings.batch)]
    if settings.images is not None:
        words += ["--images", str(settings.images)]
    if settings.checkpoints:
        words += ["--checkpoints", ",".join(map(str, settings.checkpoints))]
    if data_root is not None:
        words += ["--data-root", str(data_root)]
    return shlex.join([*words, "--json"])


def run_evaluations(
    store: Path, runs: Sequence[Run], out_dir: Path, data_root: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Evaluate each run into out_dir/<name>.json, keeping a report already made from this very
    store with the same settings (so a long benchmark can be stopped and resumed)."""
    digest = store_identity(MaskStore.open(store))["tasks_sha256"]
    reports = {}
    for run in runs:
        path = out_dir / f"{run.name}.json"
        wanted = {**run.settings.to_dict()}
        if path.exists():
            old = json.loads(path.read_text())
            same = {k: old["settings"].get(k) for k in wanted} == wanted
            if old["store"]["tasks_sha256"] == digest and same:
                log(f"{run.name}: kept {path}")
                reports[run.name] = old
                continue
        log(f"{run.name}: evaluating ({eval_command_line(store, run.settings, data_root)})")
        report = evaluate_store(
            store,
            None,
            run.settings,
            data_root=data_root,
            command=eval_command_line(store, run.settings, data_root),
        ).to_dict()
        write_json(path, report)
        seconds = sum(p["seconds"] for p in report["curve"])
        log(f"{run.name}: accuracy {report['summary']['accuracy']:.2%} ({seconds:.0f} s)")
        reports[run.name] = report
    return reports


def results_table(runs: Sequence[Run], reports: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per run, our figure beside the paper's."""
    lines = [
        "| run | tasks | test images per task | accuracy | task-id accuracy | GG (task given) "
        "| max forgetting (GG: vs training; GNu: across checkpoints) | eval seconds | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        report = reports[run.name]
        summary = report["summary"]
        taskid = summary["taskid_accuracy"]
        # GG: against the accuracy recorded at training; GNu: across the checkpoints.
        across = summary["forgetting_across_checkpoints"]
        forgetting = (
            summary["forgetting_vs_training"]["max"]
            if report["settings"]["scenario"] == "GG"
            else None
            if across is None
            else across["max"]
        )
        images = report["tasks"][0]["examples"]
        seconds = sum(p["seconds"] for p in report["curve"])
        lines.append(
            f"| {run.name} | {summary['tasks_evaluated']} | {images} "
            f"| {summary['accuracy']:.2%} | {'-' if taskid is None else f'{taskid:.2%}'} "
            f"| {summary['accuracy_gg']:.2%} "
            f"| {'-' if forgetting is None else f'{forgetting:+.4f}'} | {seconds:.0f} "
            f"| {run.paper or '-'} |"
        )
    return "\n".join(lines)


def curve_table(runs: Sequence[Run], reports: dict[str, dict[str, Any]]) -> str:
    """Markdown: accuracy at each checkpoint (tasks learned), one column per run."""
    counts = sorted({p["tasks_learned"] for r in runs for p in reports[r.name]["curve"]})
    lines = [
        "| tasks learned | " + " | ".join(r.name for r in runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for count in counts:
        cells = []
        for run in runs:
            point = [p for p in reports[run.name]["curve"] if p["tasks_learned"] == count]
            cells.append(f"{point[0]['accuracy']:.2%}" if point else "")
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_benchmark(
    args: Any, store: Path, specs: Sequence[str], creation: CreationOptions, runs: Sequence[Run],
    title: str,
) -> None:  # fmt: skip
    """The stages of a paper benchmark: train the specs (resumable), then evaluate the runs
    (`args.runs` picks some), print the tables and keep them in out/summary.json."""
    if args.stage in ("train", "all"):
        seconds = train_sequence(
            store, specs, creation, TrainConfig(batches=args.batches), args.data_root
        )
        log(f"trained up to {len(specs)} tasks in {seconds:.0f} s")
    if args.stage == "train":
        return
    if args.runs is not None:  # e.g. the slow single-image runs in a second process
        runs = [run for run in runs if run.name in args.runs.split(",")]
    reports = run_evaluations(store, runs, args.out, args.data_root)
    tables = (
        f"{title}; {EMBEDDED_NOTE}.\n\n{results_table(runs, reports)}\n\n"
        f"Accuracy vs tasks learned:\n\n{curve_table(runs, reports)}\n"
    )
    print(tables)
    write_json(
        args.out / "summary.json",
        {"meta": run_metadata(sys.argv), "data": EMBEDDED_NOTE, "tables": tables},
    )


def append_random_mask(store: MaskStore, rng: Any, data: str) -> None:
    """Append a random 50% mask with an empty record: stores for timing the store, not training."""
    store.append_task(
        rng.random(store.net.mask_bits) < 0.5,
        torch.zeros(store.net.mask_bits),
        data=data,
        classes=range(10),
        accuracy=None,
        train={},
        created="",
        seconds=None,
    )
