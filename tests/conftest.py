"""Shared fixtures: small trained stores built once per test run (pytest-xdist's workers share them)
and a CliRunner that builds the app once (CPU, embedded data)."""

from __future__ import annotations

import os
import shutil

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
from filelock import FileLock  # noqa: E402

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


def built_once_per_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """A store for every test of the run to read. Under pytest-xdist each worker process is a
    session of its own: the first worker to ask trains the store beside the workers' temporary
    folders, the others wait for it instead of training it again."""
    base = tmp_path_factory.getbasetemp()
    folder = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path, done = folder / name, folder / f"{name}.built"
    with FileLock(folder / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # what a worker that failed left behind
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def permuted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three permuted tasks (permuted:1..3), lenet-300-100, 10 outputs, top-k 0.5. Do not modify:
    copy it (shutil.copytree) before writing."""
    return built_once_per_run(
        tmp_path_factory,
        "permuted.zarr",
        lambda path: build_store(path, [f"permuted:{i}" for i in (1, 2, 3)]),
    )


@pytest.fixture(scope="session")
def split_bn_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bn-2048-2048 (masks on BatchNorm channels, per-task statistics), split:0 and split:1,
    sign rule, SGD, 10 batches each: the masks only need to differ and to beat chance. Do not
    modify: copy it first."""
    return built_once_per_run(
        tmp_path_factory,
        "split-bn.zarr",
        lambda path: build_store(
            path,
            ["split:0", "split:1"],
            train=TrainConfig(lr=0.1, batches=10, optimizer="sgd"),
            arch="bn-2048-2048",
            mask_rule="sign",
        ),
    )
