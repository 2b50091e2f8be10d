"""Command-line interface: parses options, calls one library function, renders the result."""

from . import store_commands  # noqa: F401  (registers its commands)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
