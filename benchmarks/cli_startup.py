"""Cold start of the commands that need no network, against the libraries they cannot avoid.

Each command runs as a fresh process, as a shell script calls it; the baseline is
`python -c "import zarr, typer, rich"` measured in the same run, interleaved with the commands
so that a busy machine slows both alike. Goal (issue 15): each command within 1.6x of it.

    python benchmarks/cli_startup.py [--repeats 5] [--store STORE] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

GOAL = 1.6
# The least any typer command costs: typer checks every parameter's value through pydantic at
# run time (typer 0.29), an import that `import typer` alone does not pay.
TYPER_FLOOR = (
    "import typer, zarr, rich\n"
    "app = typer.Typer()\n"
    "@app.command()\n"
    "def show(store: str, json_out: bool = False) -> None:\n"
    "    pass\n"
    "app()"
)
FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "previous-release" / "lenet.zarr"


def supsup_command() -> list[str]:
    """The installed `supsup` script beside this Python, else `python -m supsup_cli`."""
    script = Path(sys.executable).parent / "supsup"
    return [str(script)] if script.exists() else [sys.executable, "-m", "supsup_cli"]


# As a user runs it: Python's bytecode cached after the first call (pip writes it at install;
# an editable install on the first run), even where the shell sets PYTHONDONTWRITEBYTECODE.
ENV: Final = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall_seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=ENV)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (median)")
    parser.add_argument("--store", type=Path, default=FIXTURE, help="store for info and verify")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "store.zarr"
        shutil.copytree(args.store, store)
        supsup = supsup_command()
        commands = {
            "baseline: import zarr, typer, rich": [
                sys.executable,
                "-c",
                "import zarr, typer, rich",
            ],
            "floor: a one-command typer app": [sys.executable, "-c", TYPER_FLOOR, "x"],
            "supsup --help": [*supsup, "--help"],
            "supsup info STORE": [*supsup, "info", str(store)],
            "supsup verify STORE": [*supsup, "verify", str(store)],
            "reference: import torch": [sys.executable, "-c", "import torch"],
        }
        for argv in commands.values():  # warm the page and bytecode caches: cold = new process
            wall_seconds(argv)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, argv in commands.items():
                times[name].append(wall_seconds(argv))
    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline = medians["baseline: import zarr, typer, rich"]
    rows = [
        {
            "command": name,
            "median_s": round(seconds, 3),
            "ratio": round(seconds / baseline, 2),
            "goal_met": None if not name.startswith("supsup") else seconds / baseline <= GOAL,
        }
        for name, seconds in medians.items()
    ]
    if args.json:
        print(json.dumps({"repeats": args.repeats, "goal": GOAL, "rows": rows}, indent=1))
        return
    print(f"| command | median of {args.repeats} (s) | / baseline | goal <= {GOAL}x |")
    print("|---|---|---|---|")
    for row in rows:
        met = "" if row["goal_met"] is None else ("met" if row["goal_met"] else "NOT met")
        print(f"| `{row['command']}` | {row['median_s']:.3f} | {row['ratio']:.2f}x | {met} |")


if __name__ == "__main__":
    main()
