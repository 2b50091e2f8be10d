"""train-tasks: many independent tasks into one store, one worker process per task at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ..learn.choices import DEFAULT_PRECISION
from .root import (
    DataRootOpt,
    JsonOpt,
    QuietOpt,
    StoreArg,
    command,
    console,
    emit_json,
    progress_bar,
    say,
)
from .store_commands import (
    ArchOpt,
    BatchesOpt,
    BatchSizeOpt,
    DensityOpt,
    EpochsOpt,
    ErScaleOpt,
    LrOpt,
    OptimizerOpt,
    OutputsOpt,
    PrecisionOpt,
    RuleOpt,
    ScheduleOpt,
    SeedOpt,
    TransferOpt,
    creation_options,
)

if TYPE_CHECKING:  # types only: the module loads inside the command
    from ..learn.many_tasks import RunSummary, TaskReport


@command("train-tasks")
def train_tasks_command(
    store: StoreArg,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Data specs, one task each: a range (permuted:1..1000), a comma list "
            "(permuted:1,3,5) or a mix (split:0..4,rotated:0..90:30).",
        ),
    ],
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes, each training one task at a time.")
    ] = 2,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="Devices the workers are pinned to, round robin (cuda:0,cuda:1). Default: the "
            "CPU, its cores shared among the workers as torch threads.",
        ),
    ] = None,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing", help="Train only the specs the store holds no task for yet."
        ),
    ] = False,
    arch: ArchOpt = None,
    outputs: OutputsOpt = None,
    seed: SeedOpt = None,
    mask_rule: RuleOpt = None,
    density: DensityOpt = None,
    er_scale: ErScaleOpt = None,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    schedule: ScheduleOpt = "constant",
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = 128,
    batches: BatchesOpt = 1000,
    transfer: TransferOpt = False,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    data_root: DataRootOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Learn one mask per data spec with several worker processes, all into one store.

    Tasks land in the order they finish, each record naming its spec. A task that fails is
    reported on one line and the others go on; the exit code is 1 if any failed. Several hosts
    may run this on one s3:// store: appends take the store's lock."""
    from ..learn.many_tasks import parse_devices, train_tasks
    from ..learn.train import TrainConfig

    config = TrainConfig(
        lr=lr,
        batch_size=batch_size,
        batches=batches,
        transfer=transfer,
        optimizer=optimizer,
        epochs=epochs,
        schedule=schedule,
        precision=precision,
    )
    creation = creation_options(arch, outputs, seed, mask_rule, density, er_scale)
    pinned = parse_devices(devices)

    def report(task: TaskReport) -> None:
        if task.error is not None:  # shown even with --quiet: it is an error
            console.print(
                f"failed {task.spec}: {task.error}",
                markup=False,
                emoji=False,
                soft_wrap=True,
                style="red",
            )
        else:
            say(
                f"task {task.index} <- {task.spec}: test accuracy {task.accuracy:.2%} "
                f"({task.seconds:.1f} s, {task.device})",
                quiet or json_out,
            )

    with progress_bar("tasks", 1, quiet) as advance:
        summary = train_tasks(
            store,
            data,
            creation,
            config,
            workers,
            pinned,
            data_root,
            skip_existing,
            progress=advance,
            on_report=report,
        )
    if json_out:
        emit_json(summary_json(store, summary))
    else:
        say(
            f"{len(summary.landed)} of {summary.requested} task(s) landed in {store}"
            + (f", {len(summary.failed)} failed" if summary.failed else "")
            + (f", {len(summary.skipped)} already held" if summary.skipped else "")
            + f" ({summary.workers} worker(s), {summary.seconds:.1f} s)",
            quiet,
        )
    if summary.failed:
        raise typer.Exit(1)


def summary_json(store: str, summary: RunSummary) -> dict[str, object]:
    """The run as one JSON object: tasks in the order they landed, failures, skipped specs."""
    return {
        "store": store,
        "requested": summary.requested,
        "workers": summary.workers,
        "devices": list(summary.devices),
        "seconds": round(summary.seconds, 3),
        "landed": [r.to_dict() for r in summary.landed],
        "failed": [r.to_dict() for r in summary.failed],
        "skipped": list(summary.skipped),
    }
