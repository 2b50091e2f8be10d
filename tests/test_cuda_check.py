"""benchmarks/cuda_check.py's own plumbing on the CPU: with parts skipped it still writes its
report (the GPU checks themselves run only on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_check.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cuda_check_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skipping_the_timings_still_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every part skipped that can be: the training and verify calls remain. Each `supsup` call
    is answered by a stand-in (training for real is what the GPU run is for), so this checks
    only the script's flow to its report."""
    script = load_script()
    calls: list[tuple[str, ...]] = []

    def fake_cli(*args: str) -> tuple[int, str, float]:
        calls.append(args)
        return 0, json.dumps({"accuracy": 0.5}), 0.0

    monkeypatch.setattr(script, "cli", fake_cli)
    skipped = "hopfield,infer,eval,allocate,timings"
    argv = ["cuda_check.py", "--dry-run-on-cpu", "--skip", skipped, "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    report = json.loads((tmp_path / "cuda-check.json").read_text())
    assert report["timings"] == []
    assert [row[1] for row in report["checks"]] == [True] * 4  # three train-task, one verify
    assert [c[0] for c in calls] == ["train-task"] * 3 + ["verify"]
    assert all(c[c.index("--device") + 1] == "cpu" for c in calls if c[0] == "train-task")
