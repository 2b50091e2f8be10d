"""The root Typer app, shared option types and the error boundary of every command."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from ..errors import ConfigError, SupsupError, one_line
from ..progress import Progress

if TYPE_CHECKING:
    import torch
    from rich.console import Console


def _plain_flags(params: list[Any]) -> list[Any]:
    """Flags take no value: an empty metavar keeps typer's rich help from showing one (such as
    `<bool>`, which suggests `--json true`; click's plain help already leaves flags bare)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class FlagCommand(TyperCommand):
    """A command whose help shows flags (and --help) without a value placeholder."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class FlagGroup(TyperGroup):
    """A group (the root app, `masks`) whose help shows flags without a value placeholder."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


app = typer.Typer(
    name="supsup",
    cls=FlagGroup,
    help=(
        "Supermasks in Superposition: one network with fixed random weights (regenerated from a "
        "seed), one bit-packed binary mask per task, task inference from data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _StderrConsole:
    """rich's Console on stderr, made at first use: importing rich.console costs about 45 ms,
    which a command that prints nothing on stderr (`verify`, `info --json`) need not pay."""

    @functools.cached_property
    def _console(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console, name)


console = _StderrConsole()
# Widest table rendered when stdout is no terminal (rich would fold lines at 80 columns there,
# which breaks `grep` and `cut` in scripts); tables keep their natural width below it.
PIPE_WIDTH: Final = 1000


def stdout_console() -> Console:
    """Human-readable results on stdout: the terminal's width, or unfolded lines in a pipe."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


_state = {"debug": False}

StoreArg = Annotated[  # a str, not a Path: Path would fold the '//' of 's3://bucket/store.zarr'
    str,
    typer.Argument(
        help="The mask store: a folder (Zarr v3) or an fsspec URL such as s3://bucket/store.zarr.",
        show_default=False,
    ),
]
DataRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        help="Folder with torchvision's MNIST (60k/10k); downloaded there when online. "
        "Default: the 5,000 embedded real MNIST digits (4,000 train / 1,000 test).",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="cpu, cuda, or auto (cuda when available).")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (machine output).")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar or messages on stderr.")
]


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of errors.")
    ] = False,
) -> None:
    _state["debug"] = debug


def command(
    name: str, group: typer.Typer | None = None, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command whose SupsupError/OSError becomes one line on stderr and exit code 2
    (on the root app, or on a sub-app such as `masks` given as `group`)."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def guarded(*args: Any, **kw: Any) -> Any:
            try:
                return function(*args, **kw)
            except BrokenPipeError:  # the reader left (`| head`): stop quietly, as shell tools do
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
                raise typer.Exit(128 + signal.SIGPIPE) from None
            except (SupsupError, OSError) as error:
                if _state["debug"]:
                    traceback.print_exc()
                message = one_line(error)
                # escape: a path or a store's text may hold '[...]', which rich reads as markup
                console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
                raise typer.Exit(2) from None

        kwargs.setdefault("cls", FlagCommand)
        return (group or app).command(name, **kwargs)(guarded)

    return register


def resolve_device(name: str) -> torch.device:
    """cpu, cuda or auto; asking for cuda without a GPU is a clear error, not a crash later."""
    import torch  # here, not at the top: commands that need no network start without it

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use cpu or auto)")
        return torch.device("cuda")
    raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, auto")


def emit_json(payload: Any) -> None:
    """Machine output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    sys.stdout.flush()


def say(message: str, quiet: bool = False, style: str | None = None) -> None:
    """A human message on stderr (stdout stays clean for pipes). Plain text, not rich markup:
    messages carry paths and store text, whose '[...]' must print as typed."""
    if not quiet:
        console.print(message, soft_wrap=True, markup=False, style=style)


@contextmanager
def progress_bar(description: str, total: int, quiet: bool) -> Iterator[Progress]:
    """A rich progress bar on stderr; off with --quiet or when stderr is not a terminal."""
    if quiet or not console.is_terminal:
        yield lambda done, total, status="": None
        return
    from rich import progress as bars

    columns = (
        bars.TextColumn("{task.description}"),
        bars.BarColumn(),
        bars.MofNCompleteColumn(),
        bars.TextColumn("{task.fields[status]}"),
        bars.TimeRemainingColumn(),
    )
    with bars.Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(done: int, total: int, status: str = "") -> None:
            progress.update(task, completed=done, total=total, status=status)

        yield advance
