"""`supsup masks overlap|merge|export`: how task masks relate, consolidate them, take one out."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..learn.choices import MERGE_RULES
from .root import FlagGroup, JsonOpt, StoreArg, app, command, emit_json, say, stdout_console

masks = typer.Typer(
    name="masks",
    cls=FlagGroup,
    help="Mask algebra: overlap between tasks, merged masks, a task's subnetwork as tensors.",
    no_args_is_help=True,
)
app.add_typer(masks)

MAX_TABLE_TASKS = 24  # wider tables do not fit a terminal: use --csv or --json


def parse_tasks(text: str) -> list[int]:
    """'1,2,5' -> [1, 2, 5]; anything else is a clear error."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--tasks must be comma-separated task indices, got {text!r}") from None


@command("overlap", group=masks)
def overlap(
    store: StoreArg,
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="Comma-separated task indices (default: all tasks)."),
    ] = None,
    csv_out: Annotated[
        bool,
        typer.Option(
            "--csv", help="Print CSV rows task_a,task_b,shared,jaccard,hamming on stdout."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Task x task Jaccard index (shared / union of kept weights) and Hamming distance."""
    from rich.table import Table

    from ..learn.mask_algebra import mask_overlap

    if csv_out and json_out:
        raise ConfigError("choose one of --csv and --json")
    from ..store import MaskStore

    result = mask_overlap(MaskStore.open(store), None if tasks is None else parse_tasks(tasks))
    jaccard, hamming = result.jaccard, result.hamming
    if json_out:
        emit_json(
            {
                "store": str(store),
                "tasks": list(result.tasks),
                "mask_bits": result.mask_bits,
                "kept": result.ones.tolist(),
                "shared": result.shared.tolist(),
                "jaccard": jaccard.tolist(),
                "hamming": hamming.tolist(),
            }
        )
    elif csv_out:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["task_a", "task_b", "shared", "jaccard", "hamming"])
        for i, a in enumerate(result.tasks):
            for j, b in enumerate(result.tasks):
                writer.writerow(
                    [a, b, int(result.shared[i, j]), f"{jaccard[i, j]:.6f}", int(hamming[i, j])]
                )
    else:
        if len(result.tasks) > MAX_TABLE_TASKS:
            raise ConfigError(
                f"{len(result.tasks)} tasks do not fit a table; use --csv, --json or --tasks"
            )
        table = Table("Jaccard", *map(str, result.tasks), box=None)
        for i, a in enumerate(result.tasks):
            table.add_row(str(a), *(f"{v:.3f}" for v in jaccard[i]))
        out = stdout_console()
        out.print(table)
        say(
            f"{result.mask_bits:,} mask bits; Hamming distances with --csv or --json; "
            "independent masks of density p have Jaccard p / (2 - p)"
        )


@command("merge", group=masks)
def merge(
    store: StoreArg,
    tasks: Annotated[
        str, typer.Option("--tasks", help="Comma-separated task indices to merge, e.g. 1,2.")
    ],
    rule: Annotated[
        str,
        typer.Option(
            "--rule",
            help=f"{', '.join(MERGE_RULES)}: keep weights kept by all, by any, or by more "
            "than half of the tasks.",
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Append the merge of existing masks as a new task, recorded as derived from its parents."""
    from ..learn.mask_algebra import merge_tasks

    record = merge_tasks(store, parse_tasks(tasks), rule)
    if json_out:
        emit_json({"store": str(store), **record.to_dict()})
    else:
        say(
            f"task {record.index} <- {record.data}: keeps {record.train['kept']:.2%} of the "
            "weights (accuracy not measured: run eval)"
        )


@command("export", group=masks)
def export(
    store: StoreArg,
    task: Annotated[int, typer.Option("--task", help="Index of the task to export.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="New file: .pt (torch.save of a dict of tensors, loads with "
            "torch.load(weights_only=True)) or .npz.",
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Write a task's subnetwork as dense tensors W ⊙ M, one per masked layer."""
    from ..learn.mask_algebra import export_task as export_subnetwork

    result = export_subnetwork(store, task, out)
    if json_out:
        emit_json(
            {
                "store": str(store),
                "task": result.task,
                "out": str(result.path),
                "tensors": {k: list(v) for k, v in result.shapes.items()},
                "kept": result.kept,
                "weights": result.total,
            }
        )
    else:
        say(
            f"wrote {result.path}: task {result.task}, {len(result.shapes)} tensors, "
            f"{result.kept:,} of {result.total:,} weights kept"
        )
