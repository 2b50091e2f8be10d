"""benchmarks/gpu_taskid.py runs its table on the CPU, and the packed answers equal the float
stack's there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_table_runs_on_the_cpu_and_the_answers_agree(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_taskid.py"), "--device", "cpu"]
        + ["--tasks", "3", "--repeats", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 3 | product with 128 columns |" in done.stdout
    (row,) = json.loads(out.read_text())
    assert row["tasks"] == 3 and row["mask_bits"] == 315_200
    measures = ("vector", "columns", "images")
    assert all(row["ms"][f"{m} {kind}"] > 0 for m in measures for kind in ("packed", "float"))
    assert row["ms"]["copy packed"] > 0 and row["ms"]["infer packed"] > 0
    assert set(row["peak_mb"]) == {"packed", "float"}
    agreement = row["agreement"]
    assert agreement["per_image_tasks_equal"] == agreement["images"] == 128
    assert agreement["vector_argmin_equal"]
    assert agreement["columns_max_relative_difference"] < 1e-5
