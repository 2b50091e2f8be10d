"""One error tree: the CLI turns any SupsupError into one line on stderr and exit code 2."""


class SupsupError(Exception):
    """Base of every error a user can cause; its message is shown as is, on one line."""


class StoreError(SupsupError):
    """The store is missing, unreadable, corrupt, locked or from an unsupported format."""


class StoreNotFoundError(StoreError):
    """Nothing is at the store's path or URL (as opposed to something damaged there)."""


class StoreMismatchError(StoreError):
    """An option or a data set contradicts what the existing store was made with."""


class StoreChangedError(StoreError):
    """Another writer committed after this one last read the store; nothing was written."""


class DataSpecError(SupsupError):
    """A data spec (`permuted:17`, `split:2`, ...) or a data source is invalid."""


class ConfigError(SupsupError):
    """An option value is out of range or names something unknown."""


class InputError(SupsupError):
    """An input file (image, array, path list) cannot be read or has the wrong shape."""


def one_line(error: BaseException) -> str:
    """An error's message on one line (what the CLI prints), or its type when it has none."""
    return " ".join(str(error).split()) or type(error).__name__
