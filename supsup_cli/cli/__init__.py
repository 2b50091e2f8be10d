"""Command-line interface: parses options, calls one library function, renders the result."""

import sys

import typer
from rich.markup import escape

from . import (  # noqa: F401  (importing a module registers its commands)
    allocate_commands,
    hopfield_commands,
    infer_commands,
    many_commands,
    masks_commands,
    pack_commands,
    plot_commands,
    store_commands,
)
from .app import app, console


def _kinds(error: BaseException) -> set[str]:
    """The class names of an error and its bases: click's exceptions are recognised by name,
    since typer may bring its own copy of click."""
    return {cls.__name__ for cls in type(error).__mro__}


def _command_path(error: Exception, argv: list[str]) -> str:
    """The command a usage error belongs to: from its context, or (for errors raised without one,
    such as a flag given a value) the command words at the front of the command line."""
    if getattr(error, "ctx", None) is not None:
        return error.ctx.command_path
    words, command = ["supsup"], typer.main.get_command(app)
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


__all__ = ["app", "main"]
