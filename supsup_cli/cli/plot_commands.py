"""`supsup plot`: figures from a store and its evaluation reports (PNG or SVG, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..learn.choices import PLOT_FORMATS as FORMATS
from .root import JsonOpt, QuietOpt, StoreArg, command, emit_json, say


@command("plot")
def plot(
    store: StoreArg,
    reports: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Evaluation reports of this store (`supsup eval --json > eval.json`); "
            "one line per report in the curves.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the figures (made if absent).")
    ] = Path("figures"),
    fmt: Annotated[
        str, typer.Option("--format", help=f"Image format: {', '.join(FORMATS)}.")
    ] = "png",
    allow_other_store: Annotated[
        bool,
        typer.Option(
            "--allow-other-store",
            help="Draw reports made from other stores too (a density sweep: one store per "
            "density); by default a report must be of STORE.",
        ),
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Accuracy vs tasks, accuracy vs bytes, task-id confusion (GNu reports) and mask overlap."""
    from ..learn.plots import plot_reports

    written = plot_reports(
        store,
        reports or [],
        out,
        fmt,
        progress=lambda name: say(f"drawing {name}", quiet),
        allow_other_store=allow_other_store,
    )
    if json_out:
        emit_json({"store": str(store), "figures": [str(p) for p in written]})
    else:
        for path in written:
            typer.echo(str(path))
