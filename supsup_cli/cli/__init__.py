"""Command-line interface: parses options, calls one library function, renders the result."""

from . import (  # noqa: F401  (importing a module registers its commands)
    allocate_commands,
    hopfield_commands,
    infer_commands,
    masks_commands,
    pack_commands,
    plot_commands,
    store_commands,
)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
