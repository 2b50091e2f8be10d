"""Shared fixtures: small trained stores built once per test session (CPU, embedded data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supsup_cli.train import CreationOptions, TrainConfig, train_task

QUICK_BATCHES = 250


def build_store(path: Path, specs: list[str], batches: int = QUICK_BATCHES, **creation) -> Path:
    """Train one quick task per spec into a new store at `path`."""
    for spec in specs:
        train_task(path, spec, CreationOptions(**creation), TrainConfig(batches=batches))
    return path


@pytest.fixture(scope="session")
def permuted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three permuted tasks (permuted:1..3), lenet-300-100, 10 outputs, top-k 0.5. Do not modify:
    copy it (shutil.copytree) before writing."""
    return build_store(tmp_path_factory.mktemp("stores") / "permuted.zarr", [f"permuted:{i}" for i in (1, 2, 3)])
