"""Command-line interface: parses options, calls one library function, renders the result.

A shell loop calls `supsup info` thousands of times, so a run imports only the module that
registers the command it names (typer would otherwise build all twenty commands on every call);
`--help`, a mistyped command and `supsup_cli.cli.app` load them all."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, Final

import typer
from rich.markup import escape

from .root import console

if TYPE_CHECKING:
    from collections.abc import Iterable

# Which module registers each top-level command (tests/test_cli.py checks it against the app).
COMMAND_MODULES: Final = {
    "init": "store_commands",
    "train-task": "store_commands",
    "eval": "store_commands",
    "info": "store_commands",
    "verify": "store_commands",
    "copy": "store_commands",
    "train-tasks": "many_commands",
    "infer": "infer_commands",
    "allocate": "allocate_commands",
    "pack": "pack_commands",
    "hopfield-encode": "hopfield_commands",
    "masks": "masks_commands",
    "plot": "plot_commands",
}


def load_commands(names: Iterable[str] | None = None) -> typer.Typer:
    """The root app with the named commands registered (every command when None)."""
    modules = (
        set(COMMAND_MODULES.values()) if names is None else {COMMAND_MODULES[n] for n in names}
    )
    for module in sorted(modules):
        importlib.import_module(f"{__name__}.{module}")
    from .root import app

    return app


def _command_word(argv: list[str]) -> str | None:
    """The command a command line names: its first word that is not a root option."""
    return next((word for word in argv if not word.startswith("-")), None)


def __getattr__(name: str) -> Any:
    """`from supsup_cli.cli import app`: the app with every command (tests, documentation)."""
    if name == "app":
        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _kinds(error: BaseException) -> set[str]:
    """The class names of an error and its bases: click's exceptions are recognised by name,
    since typer may bring its own copy of click."""
    return {cls.__name__ for cls in type(error).__mro__}


def _command_path(error: Exception, argv: list[str]) -> str:
    """The command a usage error belongs to: from its context, or (for errors raised without one,
    such as a flag given a value) the command words at the front of the command line."""
    if getattr(error, "ctx", None) is not None:
        return error.ctx.command_path
    words, command = ["supsup"], typer.main.get_command(load_commands())
    for word in argv:
        if word.startswith("-"):
            continue
        command = getattr(command, "commands", {}).get(word)
        if command is None:
            break
        words.append(word)
    return " ".join(words)


def main() -> None:
    """Run the app; a bad command line (unknown option, value out of range, missing argument)
    is one line on stderr and exit code 2, like every other error."""
    word = _command_word(sys.argv[1:])
    app = load_commands([word] if word in COMMAND_MODULES else None)
    try:
        code = app(standalone_mode=False)
    except Exception as error:
        kinds = _kinds(error)
        if "NoArgsIsHelpError" in kinds:  # `supsup` or `supsup masks` alone: the help
            error.ctx.get_help()  # typer renders it (rich) on the terminal
            sys.exit(2)
        if "UsageError" in kinds:
            where = _command_path(error, sys.argv[1:])
            message = " ".join(error.format_message().split())
            console.print(
                f"[bold red]error:[/] {escape(message)} (see {where} --help)", soft_wrap=True
            )
            sys.exit(2)
        if "Abort" in kinds:  # Ctrl-C
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["COMMAND_MODULES", "app", "load_commands", "main"]
