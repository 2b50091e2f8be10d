"""The paper benchmarks' --quick modes run end to end, and `supsup plot` draws their reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.learn.plots import load_report

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.mark.parametrize(
    ("script", "runs"),
    [
        (
            "permuted_mnist.py",
            ["gg", "gnu-oneshot-H-batch128", "gnu-oneshot-G-batch128", "gnu-oneshot-H-single"],
        ),
        ("rotated_mnist.py", ["gg", "gnu-binary-H-batch128", "gnu-oneshot-H-single"]),
    ],
)
def test_quick_benchmark_and_its_figures(script: str, runs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| run | tasks |" in done.stdout and "Accuracy vs tasks learned" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["machine"] and "5,000" in summary["data"]
    reports = {name: load_report(out / f"{name}.json") for name in runs}
    assert reports["gg"]["summary"]["forgetting_vs_training"]["max"] == 0.0
    for name in runs[1:]:
        assert reports[name]["settings"]["scenario"] == "GNu"
        assert reports[name]["command"].startswith("supsup eval ")
    # A second run keeps the reports it already has (same store, same settings).
    before = (out / "gg.json").read_text()
    again = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert again.returncode == 0 and "gg: kept" in again.stderr
    assert (out / "gg.json").read_text() == before

    figures = tmp_path / "figures"
    paths = [str(out / f"{name}.json") for name in runs]
    result = runner.invoke(app, ["plot", str(out / "store.zarr"), *paths, "--out", str(figures)])
    assert result.exit_code == 0, result.output
    assert (figures / "accuracy-vs-tasks.png").stat().st_size > 1000
    assert len(list(figures.glob("taskid-confusion-gnu-*.png"))) == len(runs) - 1
