"""The format core and the store never import torch, and neither do the commands that need no
network (`--help`, info, verify, copy, pack): they start in a fraction of torch's import time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "previous-release" / "lenet.zarr"

WITHOUT_TORCH = """
import json, sys
sys.modules["torch"] = None  # from here on, any `import torch` raises ImportError
import numpy as np
from supsup_cli.store import MaskStore

source, work = sys.argv[1], sys.argv[2]
old = MaskStore.open(source)
assert old.verify() == [], old.verify()
new = MaskStore.create(f"{work}/new.zarr", old.net, old.header.mask_rule, old.header.density)
for record in old.tasks():
    new.append_task(
        old.read_mask(record.index), np.zeros(old.header.mask_bits, np.float32),
        data=record.data, classes=record.classes, accuracy=record.accuracy,
        train=record.train, created=record.created, seconds=record.seconds,
    )
copy = old.copy_to(f"{work}/copy.zarr")
in_place = copy.pack()
small = old.pack(out=f"{work}/small.zarr", drop_raw=True)
print(json.dumps({
    "new_verify": new.verify(),
    "same_masks": bool(np.array_equal(new.read_packed(), old.read_packed())),
    "copy_verify": copy.verify(),
    "small_masks": bool(
        np.array_equal(MaskStore.open(small.path).read_packed(), old.read_packed())
    ),
    "packed_tasks": len(in_place.tasks),
    "torch_loaded": sys.modules["torch"] is not None,
}))
"""


def test_the_store_works_with_torch_blocked(tmp_path: Path) -> None:
    source = tmp_path / "old.zarr"
    shutil.copytree(FIXTURE, source)
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(source), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "new_verify": [],
        "same_masks": True,
        "copy_verify": [],
        "small_masks": True,
        "packed_tasks": 2,
        "torch_loaded": False,
    }


def imported_modules(*args: str) -> set[str]:
    """Every module a CLI call imports, from `python -X importtime` (its stderr)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "supsup_cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "no import times printed"
    return {line.rsplit("|", 1)[1].strip() for line in lines}


@pytest.mark.parametrize(
    "command",
    [["--help"], ["info"], ["info", "--json"], ["verify"], ["copy"], ["pack"], ["pack", "--out"]],
)
def test_commands_without_network_import_no_torch(command: list[str], tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(FIXTURE, store)
    args = list(command)
    if args != ["--help"]:
        args.insert(1, str(store))
    if command[0] == "copy":
        args.append(str(tmp_path / "copy.zarr"))
    if command[-1] == "--out":
        args.append(str(tmp_path / "small.zarr"))
    modules = imported_modules(*args)
    assert "supsup_cli.store" in modules or command == ["--help"]
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}
    assert not {m for m in modules if m.startswith(("supsup_cli.model", "supsup_cli.kernels"))}


def loaded_modules(*args: str) -> set[str]:
    """Every module a CLI call has loaded when it ends (`importlib.import_module`, which loads
    the command modules, bypasses `-X importtime`'s log)."""
    script = (
        "import json, sys\n"
        "from supsup_cli.cli import main\n"
        "sys.argv = ['supsup', *sys.argv[1:]]\n"
        "try:\n    main()\n"
        "except SystemExit as end:\n    assert end.code == 0, end.code\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stderr.splitlines()[-1]))


def test_a_command_loads_only_what_it_runs(tmp_path: Path) -> None:
    """`info` (called once per task from shell loops) builds its own commands, not all twenty,
    and reads without the lock or the copy code; `--help` opens no store, so loads no zarr."""
    store = tmp_path / "s.zarr"
    shutil.copytree(FIXTURE, store)
    modules = loaded_modules("info", str(store))
    commands = {m.rsplit(".", 1)[1] for m in modules if m.startswith("supsup_cli.cli.")}
    assert "store_commands" in commands
    assert not commands & {"infer_commands", "pack_commands", "masks_commands", "plot_commands"}
    assert not {"filelock", "supsup_cli.store.copy"} & modules
    help_modules = loaded_modules("--help")
    assert "supsup_cli.cli.plot_commands" in help_modules  # the help lists every command
    assert "zarr" not in help_modules


def test_the_command_table_names_each_command_s_module() -> None:
    """The table `main` loads from is the registration itself: no command missing or misplaced."""
    from supsup_cli.cli import COMMAND_MODULES, load_commands

    app = load_commands()
    where = {info.name: info.callback.__module__ for info in app.registered_commands}
    for group in app.registered_groups:
        sub = group.typer_instance
        modules = {info.callback.__module__ for info in sub.registered_commands}
        assert len(modules) == 1
        where[sub.info.name] = modules.pop()
    assert where == {name: f"supsup_cli.cli.{module}" for name, module in COMMAND_MODULES.items()}
