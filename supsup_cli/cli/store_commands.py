"""Commands that make and read a store: init, train-task, eval, info, verify."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import StoreError
from ..store import MaskStore
from ..supermask import MASK_RULES
from ..train import CreationOptions, TrainConfig, evaluate_task, train_task
from .app import (
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
)

ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="Network, for a new store: lenet-300-100 (default), fc-1024-1024."),
]
OutputsOpt = Annotated[
    int | None,
    typer.Option(
        "--outputs",
        help="Output neurons, for a new store (default 10; more than the "
        "classes adds superfluous neurons for the G objective).",
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


def _creation(arch, outputs, seed, mask_rule, density) -> CreationOptions:
    return CreationOptions(
        arch=arch, outputs=outputs, seed=seed, mask_rule=mask_rule, density=density
    )


@command("init")
def init(
    store: StoreArg,
    arch: ArchOpt = None,
    outputs: OutputsOpt = None,
    seed: SeedOpt = None,
    mask_rule: RuleOpt = None,
    density: DensityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an empty store (train-task also creates one when the path is new)."""
    net, rule, kept = _creation(arch, outputs, seed, mask_rule, density).new_store_settings()
    created = MaskStore.create(store, net, rule, kept)
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
        typer.Option("--data", help="Data spec of the task: permuted:N, rotated:DEG or split:I."),
    ],
    arch: ArchOpt = None,
    outputs: OutputsOpt = None,
    seed: SeedOpt = None,
    mask_rule: RuleOpt = None,
    density: DensityOpt = None,
    lr: Annotated[float, typer.Option("--lr", help="RMSprop learning rate on the scores.")] = 1e-4,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per training batch.")
    ] = 128,
    batches: Annotated[
        int, typer.Option("--batches", help="Training batches (steps) for this task.")
    ] = 1000,
    transfer: Annotated[
        bool,
        typer.Option("--transfer", help="Start from the mean raw scores of the earlier tasks."),
    ] = False,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Learn one task's supermask on the fixed weights; append it to the store (made if absent)."""
    config = TrainConfig(lr=lr, batch_size=batch_size, batches=batches, transfer=transfer)
    with progress_bar(f"training {data}", batches, quiet) as advance:
        outcome = train_task(
            store,
            data,
            _creation(arch, outputs, seed, mask_rule, density),
            config,
            data_root,
            resolve_device(device),
            progress=lambda step, loss: advance(step, f"loss {loss:.3f}"),
        )
    record = outcome.record
    if json_out:
        emit_json(
            {
                "store": str(store),
                "created_store": outcome.created_store,
                "mask_bytes": outcome.mask_bytes,
                **record.to_dict(),
            }
        )
    else:
        say(
            f"task {record.index} <- {record.data}: test accuracy {record.accuracy:.2%} "
            f"({outcome.result.seconds:.1f} s)"
            + (f"; created {store}" if outcome.created_store else ""),
            quiet,
        )


@command("eval")
def eval_command(
    store: StoreArg,
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec to test on (default: the task's own).")
    ] = None,
    task: Annotated[
        int | None,
        typer.Option("--task", help="Task index (default: the one task trained on --data)."),
    ] = None,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Test accuracy of one task's mask with the task given (scenario GG)."""
    result = evaluate_task(store, data, task, data_root, resolve_device(device))
    if json_out:
        emit_json(
            {
                "store": str(store),
                "task": result.task,
                "data": result.data,
                "accuracy": result.accuracy,
                "examples": result.examples,
                "scenario": "GG",
            }
        )
    else:
        typer.echo(
            f"task {result.task} on {result.data}: accuracy {result.accuracy:.2%} "
            f"({result.examples} test images)"
        )


@command("info")
def info(store: StoreArg, json_out: JsonOpt = False) -> None:
    """What a store holds: seed, network, mask rule, tasks and bytes."""
    opened = MaskStore.open(store)
    header, records = opened.header, opened.tasks()
    summary = {
        "store": str(store),
        "format_version": 1,
        "network": opened.net.to_dict(),
        "mask_rule": header.mask_rule,
        "density": header.density,
        "mask_bits": header.mask_bits,
        "mask_bytes_per_task": header.mask_bytes,
        "task_count": header.task_count,
        "stored_bytes": opened.stored_bytes(),
        "tasks": [r.to_dict() for r in records],
    }
    if json_out:
        emit_json(summary)
        return
    out = Console(highlight=False)
    net = opened.net
    out.print(
        f"[bold]{store}[/]: supsup store v1, {header.task_count} task(s), "
        f"{summary['stored_bytes']:,} bytes on disk"
    )
    out.print(
        f"network {net.arch}, {net.outputs} outputs, seed {net.seed}; rule {header.mask_rule}"
        + (f", density {header.density}" if header.density is not None else "")
        + f"; {header.mask_bits:,} mask bits = {header.mask_bytes:,} bytes per task"
    )
    if records:
        table = Table("task", "data", "classes", "accuracy", "mask bytes", "trained", box=None)
        for r in records:
            classes = (
                f"{r.classes[0]}..{r.classes[-1]}"
                if len(r.classes) > 2
                else ",".join(map(str, r.classes))
            )
            accuracy = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
            table.add_row(
                str(r.index), r.data, classes, accuracy, f"{header.mask_bytes:,}", r.created
            )
        out.print(table)


@command("verify")
def verify(store: StoreArg, json_out: JsonOpt = False) -> None:
    """Check what the format spec says a reader MUST check: exit 0 if sound, 1 if not."""
    try:
        problems = MaskStore.open(store).verify()
    except StoreError as error:
        if "no such store" in str(error):
            raise
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
