"""Many-task evaluation for `supsup eval` (GG / GNu reports as JSON, CSV or a table)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..learn.choices import METHODS, OBJECTIVES, SCENARIOS
from .root import emit_json, progress_bar, resolve_device, stdout_console

if TYPE_CHECKING:  # types only: the modules load inside the commands that use them
    from ..learn.evaluation import EvalReport, EvalSettings

MAX_TABLE_ROWS = 50

ScenarioOpt = Annotated[
    str,
    typer.Option(
        "--scenario",
        help=f"{' or '.join(SCENARIOS)}: task given at test time (GG), or inferred from the "
        "images among the stored tasks (GNu).",
    ),
]
MethodOpt = Annotated[
    str,
    typer.Option("--method", help=f"Task inference method for GNu: {', '.join(METHODS)}."),
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective",
        help=f"What task inference minimises, for GNu: {', '.join(OBJECTIVES)} (H entropy; "
        "G superfluous outputs, needs a store with more outputs than classes).",
    ),
]
BatchOpt = Annotated[
    int,
    typer.Option(
        "--batch",
        help="Test images per task-inference query in GNu (1: each image alone, as the paper's "
        "PermutedMNIST; 128: a batch, as its RotatedMNIST).",
    ),
]
ImagesOpt = Annotated[
    int | None,
    typer.Option(
        "--images",
        help="Use N test images per task (default: all): task t takes images t*N to t*N+N-1 "
        "(wrapping), so tasks built from the same digits are tested on different ones.",
    ),
]
CheckpointsOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoints",
        help="Also evaluate the store as it stood after its first k tasks, for each k given "
        "(e.g. 1,10,50 or 10..250:10): the accuracy-vs-tasks curve and forgetting across it.",
    ),
]
CsvOpt = Annotated[
    bool, typer.Option("--csv", help="Print CSV on stdout: one row per task and checkpoint.")
]


def command_line(ctx: typer.Context) -> str:
    """The invocation that reproduces this run: every argument and option that has a value."""
    words = ["supsup", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            if value:
                words.append(param.opts[0])
        elif value is not None:
            words.extend([param.opts[0], str(value)])
    return shlex.join(words)


def evaluate_many(
    ctx: typer.Context,
    store: Path,
    specs: Sequence[str] | None,
    task: int | None,
    settings: EvalSettings,
    *,
    data_root: Path | None,
    device: str,
    quiet: bool,
    json_out: bool,
    csv_out: bool,
) -> None:
    """Run the evaluation the options describe and print it as JSON, CSV or a table."""
    from ..learn.evaluation import evaluate_store

    if json_out and csv_out:
        raise typer.BadParameter("choose one of --json and --csv")
    with progress_bar(f"evaluating {settings.scenario}", 1, quiet) as advance:
        report = evaluate_store(
            store,
            specs,
            settings,
            task=task,
            data_root=data_root,
            device=resolve_device(device),
            command=command_line(ctx),
            progress=advance,
        )
    if json_out:
        emit_json(report.to_dict())
    elif csv_out:
        sys.stdout.write(report.to_csv())
    else:
        render(report)


def checkpoints_option(text: str | None) -> tuple[int, ...]:
    from ..learn.evaluation import parse_counts

    return () if text is None else parse_counts(text)


def render(report: EvalReport) -> None:
    """The human view: a per-task table (when short) and the summary."""
    from rich.table import Table

    out = stdout_console()
    summary, settings = report.summary(), report.settings
    final = report.final
    gnu = settings["scenario"] == "GNu"
    if len(final) <= MAX_TABLE_ROWS:
        columns = ["task", "data", "accuracy"] + (["GG", "task id"] if gnu else []) + ["forgetting"]
        table = Table(*columns, box=None)
        for s in final:
            data = s.data if s.tested_on == s.data else f"{s.data} on {s.tested_on}"
            row = [str(s.task), data, f"{s.accuracy:.2%}"]
            if gnu:
                row += [f"{s.accuracy_gg:.2%}", f"{s.taskid_accuracy:.2%}"]
            row.append("-" if s.forgetting is None else f"{s.forgetting:+.4f}")
            table.add_row(*row)
        out.print(table)
    how = (
        f"GNu ({settings['method']}, objective {settings['objective']}, batch {settings['batch']})"
        if gnu
        else "GG (task given)"
    )
    line = f"{how}: mean accuracy {summary['accuracy']:.2%} over {len(final)} task(s)"
    if gnu:
        line += f", task id {summary['taskid_accuracy']:.2%}, GG {summary['accuracy_gg']:.2%}"
    out.print(line)
    forgetting = summary["forgetting_vs_training"]
    if forgetting["tasks_compared"]:
        out.print(
            f"forgetting vs accuracy at training: mean {forgetting['mean']:+.4f}, "
            f"max {forgetting['max']:+.4f} over {forgetting['tasks_compared']} task(s)"
        )
    across = summary["forgetting_across_checkpoints"]
    if across is not None:
        out.print(
            f"forgetting across checkpoints: mean {across['mean']:+.4f}, max {across['max']:+.4f}"
        )
    for point in report.curve[:-1]:
        extra = "" if point.taskid_accuracy is None else f", task id {point.taskid_accuracy:.2%}"
        out.print(f"  after {point.tasks_learned} task(s): accuracy {point.accuracy:.2%}{extra}")
    out.print(
        f"{summary['mask_bytes_per_task']:,} mask bytes per task "
        f"({summary['stored_bytes_per_task']:,.0f} on disk per task, "
        f"{summary['float32_bytes_per_task']:,} as float32)"
    )
