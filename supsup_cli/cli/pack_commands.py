"""`supsup pack`: entropy-coded masks beside the raw ones, or a smaller store without them."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import ConfigError
from ..format.codecs import AUTO, CODECS, DEFAULT_CODEC
from .root import JsonOpt, QuietOpt, StoreArg, command, emit_json, progress_bar, stdout_console

REFERENCE_FP32_BITS = 32  # the reference implementation stacks fp32 masks


@command("pack")
def pack_command(
    store: StoreArg,
    codec: Annotated[
        str,
        typer.Option(
            "--codec",
            help=f"Mask codec: {AUTO} (default: encode with each, keep the smallest); "
            + "; ".join(f"{c.name}: {c.summary}" for c in CODECS.values())
            + ".",
        ),
    ] = DEFAULT_CODEC,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Write a new store here (must not exist) instead of adding the packed masks "
            "to STORE in place.",
        ),
    ] = None,
    drop_raw: Annotated[
        bool,
        typer.Option(
            "--drop-raw",
            help="With --out: leave the raw bit-packed masks out of the new store; every "
            "command reads it transparently (format version 3).",
        ),
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Entropy-code every mask near the information bound; print bits/weight vs H2(density)."""
    from rich.table import Table

    from ..store import MaskStore

    opened = MaskStore.open(store, writable=out is None)
    if not opened.task_count:
        raise ConfigError(f"{store}: the store holds no tasks; train one first")
    rows = opened.header.row_count
    with progress_bar("packing", rows, quiet) as advance:
        report = opened.pack(codec, out, drop_raw, progress=advance)
    tasks = report.tasks
    mean_bits = sum(t.bits_per_weight for t in tasks) / len(tasks) if tasks else 0.0
    mean_bound = sum(t.bound for t in tasks) / len(tasks) if tasks else 0.0
    if json_out:
        emit_json(
            {
                "store": report.path,
                "codec": report.codec,
                "raw_dropped": report.raw_dropped,
                "seconds": report.seconds,
                "stored_bytes": report.stored_bytes,
                "mean_bits_per_weight": mean_bits,
                "mean_h2": mean_bound,
                "tasks": [
                    {
                        "task": t.task,
                        "density": t.density,
                        "bits_per_weight": t.bits_per_weight,
                        "h2": t.bound,
                        "blob_bytes": t.blob_bytes,
                    }
                    for t in tasks
                ],
            }
        )
        return
    table = Table("task", "density", "bits/weight", "H2(density)", "vs H2", "bytes", box=None)
    for t in tasks:
        table.add_row(
            str(t.task),
            f"{t.density:.4f}",
            f"{t.bits_per_weight:.4f}",
            f"{t.bound:.4f}",
            f"{t.bits_per_weight / t.bound - 1:+.2%}" if t.bound else "-",
            f"{t.blob_bytes:,}",
        )
    out_console = stdout_console()
    out_console.print(table)
    out_console.print(
        f"packed {len(tasks)} task(s) into {report.path} with {report.codec} in "
        f"{report.seconds:.2f} s: {mean_bits:.4f} bits/weight (H2 {mean_bound:.4f}; raw 1, "
        f"fp32 reference {REFERENCE_FP32_BITS})"
        + ("; raw masks dropped" if report.raw_dropped else "; raw masks kept")
        + f"; {report.stored_bytes:,} bytes on disk",
        soft_wrap=True,
    )
