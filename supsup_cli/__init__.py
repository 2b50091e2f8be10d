"""supsup: Supermasks in Superposition, a mask store and a command-line tool."""

__version__ = "0.1.0"
