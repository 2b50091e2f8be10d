"""`supsup allocate`: learn a stream without task labels (NNs); the audit log `info --log` shows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from rich.markup import escape

from ..format.rules import MASK_RULES
from ..learn.choices import DEFAULT_ALLOCATE_OUTPUTS as DEFAULT_OUTPUTS
from ..learn.choices import DEFAULT_ALLOCATE_RULE as DEFAULT_RULE
from ..learn.choices import DEFAULT_BUDGET, DEFAULT_EPSILON, OBJECTIVES
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
    from ..learn.allocate_config import AuditRow, StreamOutcome
    from ..store import MaskStore

BUDGET_EXIT: Final = 3  # the budget of masks stopped the run (documented in the help)


@command("allocate")
def allocate_command(
    store: StoreArg,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="The stream: data specs in order, one segment each; an item without a kind "
            "keeps the previous one (permuted:1,2,1,3,2). Labels are used for training; the "
            "task identity never is.",
        ),
    ],
    batches_per_segment: Annotated[
        int, typer.Option("--batches-per-segment", help="Training batches drawn from each segment.")
    ] = 1000,
    check_every: Annotated[
        int,
        typer.Option(
            "--check-every",
            help="Decide every N batches (counted over the whole stream) whether a known mask "
            "fits the batch or a new one is needed. Segments of a multiple of N batches are "
            "checked as they start.",
        ),
    ] = 100,
    epsilon: Annotated[
        float,
        typer.Option(
            "--epsilon",
            help="Allocate when p = max softmax(-dH/dalpha) < (1 + epsilon) / max(k, 5).",
        ),
    ] = DEFAULT_EPSILON,
    budget: Annotated[
        int,
        typer.Option(
            "--budget",
            help=f"Most masks the store may hold. When a new one is needed beyond it the run "
            f"stops (what was learned is kept) and exits with code {BUDGET_EXIT}.",
        ),
    ] = DEFAULT_BUDGET,
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="What the one-shot gradient differentiates: "
            + "; ".join(f"{name}: {text}" for name, text in OBJECTIVES.items())
            + ".",
        ),
    ] = "H",
    lr: Annotated[float, typer.Option("--lr", help="RMSprop learning rate on the scores.")] = 1e-4,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per training batch (and per decision).")
    ] = 128,
    shuffle_seed: Annotated[
        int, typer.Option("--shuffle-seed", help="Seed of the order of each segment's batches.")
    ] = 0,
    commit_every: Annotated[
        int,
        typer.Option(
            "--commit-every",
            help="Write the mask being trained to the store every N checks (and whenever the "
            "decision changes the mask, and at the end): a crash loses at most N checks' batches.",
        ),
    ] = 10,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch", help="Network, for a new store: lenet-300-100 (default), fc-1024-1024."
        ),
    ] = None,
    outputs: Annotated[
        int | None,
        typer.Option(
            "--outputs",
            help=f"Output neurons, for a new store (default {DEFAULT_OUTPUTS}: the superfluous "
            "ones make the allocation decision sharp; the paper used 500).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Seed of the fixed random weights, for a new store (default 0)."
        ),
    ] = None,
    mask_rule: Annotated[
        str | None,
        typer.Option(
            "--mask-rule",
            help=f"Mask rule, for a new store: {' or '.join(MASK_RULES)} (default "
            f"{DEFAULT_RULE}, as GNu/NNs; an existing topk store keeps topk).",
        ),
    ] = None,
    density: Annotated[
        float | None,
        typer.Option("--density", help="Fraction of weights KEPT, for a new topk store."),
    ] = None,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Learn a stream of data segments with no task labels (NNs): every --check-every batches
    the one-shot gradient picks a known mask or allocates a new one; each decision is logged in
    the store (`supsup info STORE --log`).

    Exit codes: 0 done; 2 error (nothing half-written); 3 the --budget of masks was reached
    (the run stopped; masks learned until then are in the store).
    """
    from ..learn.allocate import allocate_stream
    from ..learn.allocate_config import AllocateConfig, parse_stream
    from ..learn.train import CreationOptions

    config = AllocateConfig(
        batches_per_segment=batches_per_segment,
        check_every=check_every,
        epsilon=epsilon,
        budget=budget,
        objective=objective,
        lr=lr,
        batch_size=batch_size,
        shuffle_seed=shuffle_seed,
        commit_every=commit_every,
    )
    options = CreationOptions(
        arch=arch, outputs=outputs, seed=seed, mask_rule=mask_rule, density=density
    )
    specs = parse_stream(data)
    total = len(specs) * batches_per_segment
    with progress_bar(f"allocate {len(specs)} segments", total, quiet) as advance:
        outcome = allocate_stream(
            store,
            specs,
            config,
            options,
            data_root,
            resolve_device(device),
            progress=advance,
            on_decision=lambda row: _announce(row, quiet or json_out),
        )
    if json_out:
        emit_json({**outcome.to_dict(), "exit_code": BUDGET_EXIT if outcome.budget_stopped else 0})
    else:
        _summary(outcome)
    if outcome.budget_stopped:
        last = outcome.decisions[-1]
        say(
            f"[bold red]budget reached:[/] a new mask was needed at batch {last.batch} "
            f"(segment {last.segment}, {escape(last.data)}) but the store holds {budget} "
            f"mask(s), the --budget; stopped after {outcome.batches_trained} batches",
            quiet,
        )
        raise typer.Exit(BUDGET_EXIT)


def _announce(row: AuditRow, quiet: bool) -> None:
    """A line on stderr for each decision that changes which mask trains."""
    from ..learn.allocate_rule import ALLOCATE, BUDGET, CONTINUE

    if row.decision == CONTINUE:
        return
    where = f"batch {row.batch} (segment {row.segment}, {escape(row.data)})"
    if row.p is None:
        say(f"{where}: no masks yet -> new mask {row.mask}", quiet)
    elif row.decision == ALLOCATE:
        why = f"p {row.p:.4f} < {row.threshold:.4f}" if row.p < row.threshold else row.reason
        say(f"{where}: {why} -> new mask {row.mask}", quiet)
    elif row.decision != BUDGET:
        say(f"{where}: p {row.p:.4f} >= {row.threshold:.4f} -> mask {row.mask}", quiet)


def _summary(outcome: StreamOutcome) -> None:
    from rich.table import Table

    out = stdout_console()
    new = len(outcome.allocated)
    out.print(
        f"[bold]{escape(outcome.store)}[/]: {len(outcome.segments)} segments, "
        f"{outcome.batches_trained:,} batches in {outcome.seconds:.1f} s; masks "
        f"{outcome.masks_before} -> {outcome.masks_after} ({new} allocated"
        + (
            f", {len(outcome.taken_in)} appended by other writers meanwhile"
            if outcome.taken_in
            else ""
        )
        + ")"
    )
    out.print(
        f"purity {outcome.purity:.2%} (batches on a mask from that mask's main data spec), "
        f"inverse purity {outcome.inverse_purity:.2%} (batches of a spec on that spec's main mask)"
    )
    table = Table("data", "mask", "masks used", "accuracy", box=None)
    for spec in outcome.specs:
        used = ",".join(map(str, spec.masks_used))
        table.add_row(escape(spec.data), str(spec.mask), used, f"{spec.accuracy:.2%}")
    out.print(table)


def show_log(store: MaskStore, json_out: bool) -> None:
    """`supsup info STORE --log`: every allocate decision, when and why (one line each, never
    cut to the terminal's width, so it greps and pipes whole)."""
    rows = store.read_log()
    if json_out:
        emit_json({"store": store.path, "log": rows})
        return
    if not rows:
        typer.echo(f"{store.path}: the audit log is empty (written by `supsup allocate`)")
        return
    cells = [[_cell(row, key) for key in _LOG_KEYS] for row in rows]
    header = ["batch", "segment", "data", "p", "threshold", "decision", "mask", "why", "time"]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        padded = (text.ljust(width) for text, width in zip(line, widths, strict=True))
        typer.echo("  ".join(padded).rstrip())


_LOG_KEYS: Final = (
    "batch",
    "segment",
    "data",
    "p",
    "threshold",
    "decision",
    "mask",
    "reason",
    "time",
)


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return " ".join(str(value).split())  # the store's text, kept on one line
