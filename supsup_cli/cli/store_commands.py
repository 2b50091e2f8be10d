"""Commands that make and read a store: init, train-task, eval, info, verify."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ..errors import ConfigError, StoreError, StoreNotFoundError
from ..format.rules import MASK_RULES
from ..learn.choices import DEFAULT_PRECISION, PRECISIONS
from .allocate_commands import show_log
from .eval_commands import (
    BatchOpt,
    CheckpointsOpt,
    CsvOpt,
    ImagesOpt,
    MethodOpt,
    ObjectiveOpt,
    ScenarioOpt,
    checkpoints_option,
    evaluate_many,
)
from .hopfield_commands import hopfield_line
from .root import (
    DataRootOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    StoreArg,
    command,
    emit_json,
    progress_bar,
    resolve_device,
    say,
    stdout_console,
)

if TYPE_CHECKING:  # types only: the modules load inside the commands that use them
    from ..learn.train import CreationOptions

ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Network, for a new store: lenet-300-100 (default; resnet18-gem for splitcifar100, "
        "resnet50 for splitimagenet), fc-1024-1024, or bn-2048-2048 "
        "(masks on BatchNorm channels, for hopfield-encode; use --mask-rule sign --optimizer sgd "
        "--lr 0.1); convolutional, with per-task BatchNorm: conv4 (1x28x28), resnet18-gem "
        "(3x32x32), resnet18 and resnet50 (3x224x224).",
    ),
]
OutputsOpt = Annotated[
    int | None,
    typer.Option(
        "--outputs",
        help="Output neurons, for a new store (default 10; 100 for splitcifar100, 1000 for "
        "splitimagenet: the data set's classes); more than the classes adds superfluous "
        "neurons for the G objective.",
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Seed of the fixed random weights, for a new store (default 0)."),
]
RuleOpt = Annotated[
    str | None,
    typer.Option(
        "--mask-rule",
        help=f"How scores become a mask, for a new store: {' or '.join(MASK_RULES)} "
        "(topk keeps the top --density of |scores| per layer, default; "
        "sign keeps score >= 0, for GNu).",
    ),
]
DensityOpt = Annotated[
    float | None,
    typer.Option(
        "--density",
        help="Fraction of weights KEPT by the topk rule, in (0, 1], for a new store (default 0.5).",
    ),
]

LrOpt = Annotated[
    float | None,
    typer.Option(
        "--lr", help="Learning rate on the scores (default 1e-3 for conv nets, else 1e-4)."
    ),
]
OptimizerOpt = Annotated[
    str | None,
    typer.Option(
        "--optimizer",
        help="adam, rmsprop or sgd (momentum 0.9, for bn-2048-2048). Default: the reference's, "
        "adam for conv nets (SplitCIFAR-100), rmsprop for the MLPs.",
    ),
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", help="Images per training batch (all ranks together).")
]
BatchesOpt = Annotated[int, typer.Option("--batches", help="Training batches (steps) per task.")]
TransferOpt = Annotated[
    bool,
    typer.Option(
        "--transfer",
        help="Start from the mean raw scores of the earlier tasks (the store must keep them: "
        "made by init --keep-scores or a first train-task --transfer).",
    ),
]
ScheduleOpt = Annotated[
    str, typer.Option("--schedule", help="Learning rate: constant (default) or cosine.")
]
EpochsOpt = Annotated[
    int | None,
    typer.Option("--epochs", help="Passes over the training split (replaces --batches)."),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Arithmetic of training: "
        + "; ".join(f"{name}: {text}" for name, text in PRECISIONS.items())
        + ". The mask and the statistics are stored alike either way.",
    ),
]

ErScaleOpt = Annotated[
    float | None,
    typer.Option(
        "--er-scale",
        help="Erdos-Renyi budget for a new topk store: site l keeps min(density, s*(c_out + "
        "c_in)/(c_out*c_in*kh*kw)) of its weights (the reference's conv setting, density 0.5).",
    ),
]


def creation_options(arch, outputs, seed, mask_rule, density, er_scale=None) -> CreationOptions:
    """The creation options as given (None: not given), for train-task, train-tasks and init."""
    from ..learn.train import CreationOptions

    return CreationOptions(
        arch=arch,
        outputs=outputs,
        seed=seed,
        mask_rule=mask_rule,
        density=density,
        er_scale=er_scale,
    )


@command("init")
def init(
    store: StoreArg,
    arch: ArchOpt = None,
    outputs: OutputsOpt = None,
    seed: SeedOpt = None,
    mask_rule: RuleOpt = None,
    density: DensityOpt = None,
    er_scale: ErScaleOpt = None,
    keep_scores: Annotated[
        bool,
        typer.Option(
            "--keep-scores",
            help="Sum the tasks' raw scores (4 bytes a weight), so that train-task --transfer "
            "can start from their mean.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create an empty store (train-task also creates one when the path is new)."""
    options = creation_options(arch, outputs, seed, mask_rule, density, er_scale)
    net, rule, kept = options.new_store_settings()
    from ..store import MaskStore

    created = MaskStore.create(store, net, rule, kept, er_scale=er_scale, keep_scores=keep_scores)
    if json_out:
        emit_json({"store": str(store), **created.header.to_attrs()})
    else:
        say(
            f"created {store}: {net.arch}, {net.outputs} outputs, seed {net.seed}, rule {rule}"
            + (f", density {kept}" if kept is not None else "")
        )


@command("train-task")
def train_task_command(
    store: StoreArg,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Data spec of the task: permuted:N, rotated:DEG, split:I, splitcifar100:I, "
            "splitimagenet:I or folder:PATH.",
        ),
    ],
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
    again: Annotated[
        bool,
        typer.Option(
            "--again", help="Train even if the store already holds a task on this data spec."
        ),
    ] = False,
    class_order: Annotated[
        str | None,
        typer.Option(
            "--class-order",
            help="splitcifar100: seed:N splits the classes in a random order from seed N "
            "(recorded in the spec as splitcifar100:I@seed:N); default the natural order.",
        ),
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="folder: leave unreadable images out (named) instead."),
    ] = False,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Learn one task's supermask on the fixed weights; append it to the store (made if absent).

    Started by torchrun (WORLD_SIZE > 1), the ranks share each batch through DDP and rank 0
    alone writes the store and prints."""
    import torch

    from ..learn.distributed import process_group, rank_from_env
    from ..learn.train import TrainConfig, TrainingInterrupted, train_task
    from ..threads import training_threads

    if class_order is not None:
        if not data.startswith("splitcifar100:") or "@" in data:
            raise ConfigError("--class-order applies to a splitcifar100:I spec")
        data = f"{data}@{class_order}"
    threads = training_threads(torch.get_num_threads())
    if threads is not None:
        torch.set_num_threads(threads)
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
    rank, chosen = rank_from_env(), resolve_device(device)
    try:
        with (
            nullcontext(None) if rank is None else process_group(rank, chosen) as group,
            progress_bar(
                f"training {data}", batches, quiet or (group is not None and not group.writes)
            ) as advance,
        ):
            where = chosen if group is None else group.device
            outcome = train_task(
                store,
                data,
                creation,
                config,
                data_root,
                where,
                advance,
                group,
                again=again,
                skip_bad=skip_bad,
            )
    except TrainingInterrupted as stopped:  # a bare KeyboardInterrupt (while writing) goes on
        kept = "is as it was" if stopped.store_existed else "was not created"
        say(f"interrupted: nothing of the task on {stopped.spec} was kept; {store} {kept}")
        raise typer.Exit(130) from None
    if outcome is None:  # a rank other than 0: rank 0 reports
        return
    record = outcome.record
    for name in outcome.skipped:
        say(f"skipped unreadable image {name}", quiet, style="yellow")
    if json_out:
        emit_json(
            {
                "store": str(store),
                "created_store": outcome.created_store,
                "mask_bytes": outcome.mask_bytes,
                "world_size": 1 if rank is None else rank.world_size,
                **record.to_dict(),
            }
        )
    else:
        say(
            f"task {record.index} <- {record.data}: test accuracy {record.accuracy:.2%} "
            f"({outcome.result.seconds:.1f} s)"
            + (f"; created {store}" if outcome.created_store else "")
            + ("" if rank is None else f"; {rank.world_size} ranks"),
            quiet,
        )


@command("eval")
def eval_command(
    ctx: typer.Context,
    store: StoreArg,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data spec(s) to test on: one (permuted:17), a range (permuted:1..250, "
            "rotated:0..350:10) or a comma list (permuted:1,3,5). Default: every stored task "
            "on its own data.",
        ),
    ] = None,
    task: Annotated[
        int | None,
        typer.Option("--task", help="Task index (default: the one task trained on --data)."),
    ] = None,
    scenario: ScenarioOpt = "GG",
    method: MethodOpt = "one-shot",
    objective: ObjectiveOpt = "H",
    batch: BatchOpt = 128,
    images: ImagesOpt = None,
    checkpoints: CheckpointsOpt = None,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
) -> None:
    """Test accuracy of stored masks, task given (GG) or inferred (GNu); one task or many.

    One task in GG prints one line (or a small JSON object); anything more prints the full
    report: per task, checkpoints, task-id confusion, forgetting, bytes, store identity, command.
    """
    from ..learn.data import expand_specs
    from ..learn.evaluation import EvalSettings
    from ..learn.train import evaluate_task

    specs = None if data is None else expand_specs(data)
    single = task is not None or (specs is not None and len(specs) == 1)
    if not single or scenario != "GG" or csv_out or images is not None or checkpoints:
        settings = EvalSettings(
            scenario, method, objective, batch, images, checkpoints_option(checkpoints)
        )
        evaluate_many(
            ctx,
            store,
            specs,
            task,
            settings,
            data_root=data_root,
            device=device,
            quiet=quiet,
            json_out=json_out,
            csv_out=csv_out,
        )
        return
    result = evaluate_task(
        store, None if specs is None else specs[0], task, data_root, resolve_device(device)
    )
    if json_out:
        emit_json(
            {
                "store": str(store),
                "task": result.task,
                "data": result.data,
                "tested_on": result.tested_on,
                "accuracy": result.accuracy,
                "examples": result.examples,
                "scenario": "GG",
            }
        )
    else:
        tested = "" if result.tested_on == result.data else f" ({result.tested_on})"
        typer.echo(
            f"task {result.task} on {result.data}{tested}: accuracy {result.accuracy:.2%} "
            f"({result.examples} test images)"
        )


@command("info")
def info(
    store: StoreArg,
    log: Annotated[
        bool,
        typer.Option("--log", help="Show the audit log instead: each `supsup allocate` decision."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """What a store holds: seed, network, mask rule, tasks and bytes."""
    from rich.table import Table

    from ..store import MaskStore

    opened = MaskStore.open(store)
    if log:
        show_log(opened, json_out)
        return
    header, records = opened.header, opened.tasks()
    summary = {
        "store": str(store),
        "format_version": header.version,
        "network": opened.net.to_dict(),
        "mask_rule": header.mask_rule,
        "density": header.density,
        "mask_bits": header.mask_bits,
        "mask_bytes_per_task": header.mask_bytes,
        "stats_bytes_per_task": 4 * opened.net.stats_size,
        "rows_per_chunk": header.row_chunk,
        "task_count": header.task_count,
        "stored_bytes": opened.stored_bytes(),
        "tasks": [r.to_dict() for r in records],
        "hopfield": opened.hopfield_summary(),
    }
    if json_out:
        emit_json(summary)
        return
    out = stdout_console()
    net = opened.net
    out.print(
        f"[bold]{escape(store)}[/]: supsup store v{header.version}, {header.task_count} task(s), "
        f"{summary['stored_bytes']:,} bytes on disk, {header.row_chunk} row(s) per chunk"
    )
    out.print(
        f"network {net.arch} ({'x'.join(map(str, net.shape))} inputs), {net.outputs} outputs, "
        f"seed {net.seed}; rule {header.mask_rule}"
        + (f", density {header.density}" if header.density is not None else "")
        + f"; {header.mask_bits:,} mask bits = {header.mask_bytes:,} bytes per task"
        + (
            f" + {4 * net.stats_size:,} bytes of BatchNorm statistics = "
            f"{header.mask_bytes + 4 * net.stats_size:,}"
            if net.stats_size
            else ""
        )
    )
    if summary["hopfield"] is not None:
        out.print(hopfield_line(summary["hopfield"]), markup=False)
    if records:
        table = Table("task", "data", "classes", "accuracy", "mask bytes", "trained", box=None)
        for r in records:
            classes = (
                f"{r.classes[0]}..{r.classes[-1]}"
                if len(r.classes) > 2
                else ",".join(map(str, r.classes))
            )
            accuracy = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
            table.add_row(  # escape: record text is the store's, not markup
                str(r.index),
                escape(r.data),
                classes,
                accuracy,
                f"{header.mask_bytes:,}",
                escape(r.created),
            )
        out.print(table)


@command("verify")
def verify(store: StoreArg, json_out: JsonOpt = False) -> None:
    """Check what the format spec says a reader MUST check: exit 0 if sound, 1 if not."""
    from ..store import MaskStore

    try:
        problems = MaskStore.open(store).verify()
    except StoreNotFoundError:
        raise
    except StoreError as error:
        problems = [str(error)]
    if json_out:
        emit_json({"store": str(store), "ok": not problems, "problems": problems})
    elif problems:
        for problem in problems:
            typer.echo(f"FAIL {problem}")
    else:
        typer.echo(f"ok {store}")
    if problems:
        raise typer.Exit(1)


@command("copy")
def copy_store(
    store: StoreArg,
    target: Annotated[
        str,
        typer.Argument(
            help="Where the copy goes: a new folder or an fsspec URL (s3://bucket/new.zarr); "
            "an existing store there is refused.",
            show_default=False,
        ),
    ],
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy a store whole to a new folder or URL, in the current layout.

    Everything is copied (tasks, records, Hopfield state, packed blobs, log) into the current
    layout of many rows per chunk: stores made before it read several times faster afterwards.
    Also moves a store between folders and object stores. The source is verified and locked
    while it is read (writers wait); a source that cannot be locked (read-only folder or bucket,
    http:// URL) is read without the lock and the copy fails if a writer committed meanwhile.
    The copy is verified before the command succeeds."""
    from ..store import MaskStore

    source = MaskStore.open(store)
    before = source.header.row_chunk
    with progress_bar("copying (%)", 100, quiet) as advance:

        def show(done: int, total: int) -> None:
            advance(done * 100 // max(1, total), 100, f"{done / 1e6:,.0f} of {total / 1e6:,.0f} MB")

        written = source.copy_to(target, show)
    summary = {
        "store": str(store),
        "copy": written.path,
        "tasks": written.task_count,
        "rows_per_chunk": {"before": before, "after": written.header.row_chunk},
        "stored_bytes": written.stored_bytes(),
    }
    if json_out:
        emit_json(summary)
    else:
        typer.echo(
            f"copied {written.task_count} task(s) to {written.path}: {written.header.row_chunk} "
            f"row(s) per chunk (was {before}), {summary['stored_bytes']:,} bytes; verified"
        )
