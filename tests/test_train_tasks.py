"""train-tasks: several worker processes append independent tasks to one store through its lock;
a bad spec fails alone, and a resumed run trains only what the store lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import ConfigError
from supsup_cli.learn.many_tasks import parse_devices, split_specs
from supsup_cli.store import MaskStore

RUN_TIMEOUT = 300  # a safety net on a loaded machine, not a timing assert


def run_supsup(*args: str) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "supsup_cli", *args],
        env=dict(os.environ, PYTHONPATH=path),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_split_specs_keeps_good_items_and_reports_each_bad_one() -> None:
    specs, bad = split_specs("permuted:1..3,x,split:0,split:y,rotated:0..90:45")
    assert specs == [*(f"permuted:{i}" for i in (1, 2, 3)), "split:0", *(
        f"rotated:{d}" for d in (0, 45, 90))]  # fmt: skip
    assert [b.spec for b in bad] == ["permuted:x", "split:y"]
    assert all(b.error and "invalid data spec" in b.error for b in bad)


def test_devices_are_checked() -> None:
    assert parse_devices(None) == ("cpu",) and parse_devices("cpu, cpu") == ("cpu", "cpu")
    with pytest.raises(ConfigError, match="cuda"):
        parse_devices("cuda:99")
    with pytest.raises(ConfigError, match="unknown device"):
        parse_devices("gpu0")


def test_bad_worker_count_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train-tasks", str(tmp_path / "s.zarr"), "--data", "permuted:1", "--workers", "0"]
    )
    assert result.exit_code == 2 and "--workers must be in [1, 256]" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_six_tasks_with_two_workers_then_a_resumed_run_trains_none(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    specs = [f"permuted:{i}" for i in range(1, 7)]
    done = run_supsup(
        "train-tasks", str(path), "--data", "permuted:1..6", "--workers", "2",
        "--batches", "20", "--json", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["workers"] == 2 and summary["failed"] == [] and summary["skipped"] == []
    assert sorted(r["data"] for r in summary["landed"]) == specs
    assert sorted(r["index"] for r in summary["landed"]) == list(range(6))
    store = MaskStore.open(path)
    assert store.verify() == [] and store.task_count == 6
    landed = {r["index"]: r["data"] for r in summary["landed"]}
    assert {r.index: r.data for r in store.tasks()} == landed  # each record names its spec
    before = snapshot(path)
    again = run_supsup(
        "train-tasks", str(path), "--data", "permuted:1..6", "--skip-existing", "--json"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(again.stdout)
    assert resumed["landed"] == [] and resumed["skipped"] == specs
    assert snapshot(path) == before


def test_a_bad_spec_fails_alone_and_the_others_land(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    done = run_supsup(
        "train-tasks", str(path), "--data", "permuted:1..4,permuted:x,split:7",
        "--workers", "2", "--batches", "10",
    )  # fmt: skip
    assert done.returncode == 1
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == 2  # one line each: bad syntax (found at once), bad split (in a worker)
    assert failed[0].startswith("failed permuted:x: invalid data spec 'permuted:x'")
    assert failed[1].startswith("failed split:7: split:I takes I in 0..4")
    assert "4 of 6 task(s) landed" in done.stderr
    store = MaskStore.open(path)
    assert store.verify() == []
    assert sorted(r.data for r in store.tasks()) == [f"permuted:{i}" for i in range(1, 5)]


def test_the_training_options_of_train_task_reach_every_worker(tmp_path: Path) -> None:
    """--precision, --schedule, --epochs, --er-scale and --transfer are train-task's, task for
    task; the store the run makes first is the one train-task would make."""
    path = tmp_path / "c.zarr"
    done = run_supsup(
        "train-tasks", str(path), "--data", "split:0,split:1", "--workers", "1",
        "--arch", "conv4", "--er-scale", "1.0", "--precision", "bf16", "--schedule", "cosine",
        "--epochs", "1", "--batch-size", "1000", "--transfer", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    store = MaskStore.open(path)
    assert store.verify() == [] and store.header.er_scale == 1.0 and store.keeps_scores
    for record in store.tasks():
        assert record.train["precision"] == "bf16" and record.train["schedule"] == "cosine"
        assert record.train["epochs"] == 1 and record.train["batch_size"] == 1000
        assert record.train["transfer"]
    refused = run_supsup(
        "train-tasks", str(tmp_path / "d.zarr"), "--data", "split:0", "--precision", "fp16"
    )
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "fp16" in refused.stderr
