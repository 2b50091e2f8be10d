"""Shared fixtures: small trained stores built once per test session (CPU, embedded data)."""

from __future__ import annotations

import os

# The nets under test are small: one thread per process is faster than two fighting for the
# cores, and the tests that start several supsup processes at once would oversubscribe them.
# Set before torch is imported, so this process and every subprocess inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import typer  # noqa: E402
import typer.testing  # noqa: E402
from click import Command  # noqa: E402

from supsup_cli.learn.train import CreationOptions, TrainConfig, train_task

QUICK_BATCHES = 250


def _built_once(get_command: Callable[[typer.Typer], Command]) -> Callable[[typer.Typer], Command]:
    """Typer's CliRunner builds the app's whole click command tree on every invoke (30 ms for this
    CLI, over a thousand invokes a run). The tree is the same each time, as in one `supsup`
    process, so each app is built once per test process."""
    built: dict[typer.Typer, Command] = {}

    def get(app: typer.Typer) -> Command:
        if app not in built:
            built[app] = get_command(app)
        return built[app]

    return get


if hasattr(typer.testing, "_get_command"):  # where Typer's runner looks its builder up
    typer.testing._get_command = _built_once(typer.testing._get_command)


def build_store(
    path: Path,
    specs: list[str],
    batches: int = QUICK_BATCHES,
    train: TrainConfig | None = None,
    **creation,
) -> Path:
    """Train one quick task per spec into a new store at `path` (`train` overrides `batches`)."""
    for spec in specs:
        train_task(path, spec, CreationOptions(**creation), train or TrainConfig(batches=batches))
    return path


@pytest.fixture(scope="session")
def permuted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three permuted tasks (permuted:1..3), lenet-300-100, 10 outputs, top-k 0.5. Do not modify:
    copy it (shutil.copytree) before writing."""
    path = tmp_path_factory.mktemp("stores") / "permuted.zarr"
    return build_store(path, [f"permuted:{i}" for i in (1, 2, 3)])


@pytest.fixture(scope="session")
def split_bn_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bn-2048-2048 (masks on BatchNorm channels, per-task statistics), split:0 and split:1,
    sign rule, SGD, 10 batches each: the masks only need to differ and to beat chance. Do not
    modify: copy it first."""
    return build_store(
        tmp_path_factory.mktemp("stores") / "split-bn.zarr",
        ["split:0", "split:1"],
        train=TrainConfig(lr=0.1, batches=10, optimizer="sgd"),
        arch="bn-2048-2048",
        mask_rule="sign",
    )
