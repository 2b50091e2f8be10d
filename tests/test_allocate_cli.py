"""`supsup allocate` and `supsup info --log` through Typer's CliRunner (tiny streams)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.cli.allocate_commands import BUDGET_EXIT
from supsup_cli.store import MaskStore

runner = CliRunner()
TINY = ("--batches-per-segment", "20", "--check-every", "10", "--batch-size", "32")


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One tiny allocate run (2 segments, --json), shared by the tests that only read it."""
    path = tmp_path_factory.mktemp("allocate") / "s.zarr"
    result = run("allocate", path, "--data", "permuted:1,2", *TINY, "--json")
    assert result.exit_code == 0, result.output
    return path, json.loads(result.stdout)


def test_allocate_json_describes_the_run(streamed):
    path, payload = streamed
    store = MaskStore.open(path)
    assert payload["exit_code"] == 0 and not payload["budget_stopped"]
    assert payload["created_store"] and payload["segments"] == ["permuted:1", "permuted:2"]
    assert payload["masks_before"] == 0 and payload["masks_after"] == store.task_count
    assert payload["batches_trained"] == 40
    assert 0 < payload["purity"] <= 1 and 0 < payload["inverse_purity"] <= 1
    assert [d["batch"] for d in payload["decisions"]] == [0, 10, 20, 30]
    assert payload["allocated"] == list(range(store.task_count))
    assert [s["data"] for s in payload["specs"]] == ["permuted:1", "permuted:2"]
    assert store.header.mask_rule == "sign" and store.net.outputs == 100


def test_info_log_shows_every_decision(streamed):
    path, payload = streamed
    as_json = run("info", path, "--log", "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["log"] == payload["decisions"]
    human = run("info", path, "--log")
    assert human.exit_code == 0
    lines = human.stdout.strip().splitlines()
    assert lines[0].split()[:6] == ["batch", "segment", "data", "p", "threshold", "decision"]
    assert len(lines) == 1 + len(payload["decisions"])
    assert "no masks yet" in lines[1] and "allocate" in lines[1]
    assert "permuted:2" in lines[-1]


def test_info_log_on_a_store_without_one(tmp_path):
    path = tmp_path / "empty.zarr"
    assert run("init", path).exit_code == 0
    result = run("info", path, "--log")
    assert result.exit_code == 0 and "empty" in result.stdout
    assert json.loads(run("info", path, "--log", "--json").stdout)["log"] == []


def test_human_output_prints_purity_and_accuracy(tmp_path):
    path = tmp_path / "s.zarr"
    result = run("allocate", path, "--data", "permuted:3", *TINY)
    assert result.exit_code == 0, result.output
    assert "purity" in result.stdout and "permuted:3" in result.stdout
    assert "no masks yet -> new mask 0" in result.stderr


def test_budget_exit_code_and_message(tmp_path):
    path = tmp_path / "s.zarr"
    # epsilon 4 puts the threshold at 1: every check wants a new mask; the budget is 1.
    result = run("allocate", path, "--data", "permuted:1", *TINY, "--epsilon", "4", "--budget", "1")
    assert result.exit_code == BUDGET_EXIT == 3
    assert "budget reached" in result.stderr and "batch 10" in result.stderr
    assert MaskStore.open(path).task_count == 1
    log = json.loads(run("info", path, "--log", "--json").stdout)["log"]
    assert [row["decision"] for row in log] == ["allocate", "budget"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--data", "permuted:1,bogus:2"), "invalid data spec"),
        (("--data", "permuted:1", "--check-every", "0"), "check-every"),
        (("--data", "permuted:1", "--epsilon", "-1"), "epsilon"),
        (("--data", "permuted:1", "--budget", "0"), "budget"),
        (("--data", "permuted:1", "--objective", "Q"), "unknown objective"),
        (("--data", "permuted:1", "--arch", "bn-2048-2048"), "per-task statistics"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needle):
    path = tmp_path / "s.zarr"
    result = run("allocate", path, *TINY, *args)  # the last value of an option wins
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not path.exists()


def test_example_script_runs(tmp_path):
    """examples/nns-stream.sh as a user runs it, at a tiny size."""
    example = Path(__file__).resolve().parents[1] / "examples" / "nns-stream.sh"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(example), "s.zarr", "20", "10", "permuted:1,2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "purity" in result.stdout and "ok s.zarr" in result.stdout
    assert "no masks yet" in result.stdout  # the log printed by `info --log`
