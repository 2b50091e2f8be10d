"""benchmarks/split_cifar100.py on a tiny generated binary CIFAR-100 (2 tasks, a few batches),
and its one line when the data set is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_image_data import write_cifar_binary

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "split_cifar100.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_two_tasks_are_trained_and_each_tasks_accuracy_recorded(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path / "data", per_class=4, seed=5)
    out = tmp_path / "out"
    args = ["--data-root", str(tmp_path / "data"), "--out", str(out), "--tasks", "2"]
    result = run(*args, "--batches", "2", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "| 0 | splitcifar100:0 | 0, 1, 2, 3, 4 |" in result.stdout
    assert "| 1 | splitcifar100:1 | 5, 6, 7, 8, 9 |" in result.stdout
    assert "reference: no per-task figure for 20 x 5" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [row["classes"] for row in summary["tasks"]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [row["examples"] for row in summary["tasks"]] == [20, 20]  # 4 test images a class
    accuracies = [row["accuracy"] for row in summary["tasks"]]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert summary["mean_accuracy"] == sum(accuracies) / 2
    again = run(*args, "--batches", "2", "--batch-size", "8")  # resumes: nothing to train
    assert again.returncode == 0 and "task 0 <-" not in again.stderr


def test_a_missing_data_set_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run("--data-root", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'cifar-100-binary'}" in result.stderr
    assert not (tmp_path / "out").exists()
