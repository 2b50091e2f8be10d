"""The foundation example pipeline runs as users run it (small sizes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        ["bash", str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_permuted_mnist_pipeline_grows_a_store_without_training_a_spec_twice(
    tmp_path: Path,
) -> None:
    """The README's first command; run again with more tasks, it trains only the new one (a
    new user's trip, issue 19)."""
    first = run_example("permuted-mnist.sh", "p.zarr", "1", "60", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "task 0 on permuted:1" in first.stdout and "ok p.zarr" in first.stdout
    again = run_example("permuted-mnist.sh", "p.zarr", "2", "60", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "permuted:1: already in p.zarr" in again.stderr
    assert "task 1 on permuted:2" in again.stdout and "ok p.zarr" in again.stdout
    info = subprocess.run(
        [sys.executable, "-m", "supsup_cli", "info", "p.zarr", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    held = json.loads(info.stdout)
    assert held["task_count"] == 2
    assert [t["data"] for t in held["tasks"]] == ["permuted:1", "permuted:2"]


def test_eval_and_plot_pipeline(tmp_path: Path) -> None:
    result = run_example("eval-and-plot.sh", "w", "2", "60", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tasks_learned,task,data" in result.stdout
    for name in ("gg.json", "gnu-H.json", "gnu-G.json"):
        report = json.loads((tmp_path / "w" / name).read_text())
        assert report["store"]["task_count"] == 2 and report["curve"][0]["tasks_learned"] == 1
    assert (tmp_path / "w" / "gnu-H.csv").read_text().startswith("tasks_learned,task,")
    figures = sorted(p.name for p in (tmp_path / "w" / "figures").glob("*.png"))
    assert "accuracy-vs-tasks.png" in figures and "mask-overlap.png" in figures
    assert len([f for f in figures if f.startswith("taskid-confusion-")]) == 2


def test_many_tasks_pipeline(tmp_path: Path) -> None:
    result = run_example("many-tasks.sh", "m.zarr", "2", "5", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 task(s) landed in m.zarr" in result.stderr
    assert "0 of 2 task(s) landed in m.zarr, 2 already held" in result.stderr
    assert "task 2 <- permuted:3" in result.stderr and "2 ranks" in result.stderr
    assert "ok m.zarr" in result.stdout


def test_conv_digits_demo_trains_five_tasks_in_order(tmp_path: Path) -> None:
    result = run_example("conv-digits.sh", "w", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\s*(\d+)\s+split:(\d+)\s", result.stdout, flags=re.MULTILINE)
    assert rows == [(str(i), str(i)) for i in range(5)] * 3, "one table per method, in order"
    for method in ("exhaustive", "binary", "one-shot"):
        assert f"GNu ({method}, objective H, batch 128)" in result.stdout
