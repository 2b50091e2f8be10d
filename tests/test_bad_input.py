"""Bad input to every command: one clear line on stderr naming the problem, exit code 2, no
traceback, and nothing written (a refused new store leaves no folder behind)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format
from PIL import Image
from typer.testing import CliRunner

from supsup_cli.cli import app

runner = CliRunner()

# (case, argv, what the one line must say). "{store}" is a sound 3-task store, "{new}" a path
# where no store exists (it must still not exist afterwards), "{in}" the folder of bad inputs.
CASES: list[tuple[str, list[str], str]] = [
    # missing or wrong paths, for every command that takes a store
    ("info-missing-store", ["info", "{new}"], "no such store"),
    ("eval-missing-store", ["eval", "{new}", "--task", "0"], "no such store"),
    ("infer-missing-store", ["infer", "{new}", "--data", "permuted:1"], "no such store"),
    ("overlap-missing-store", ["masks", "overlap", "{new}"], "no such store"),
    (
        "export-missing-store",
        ["masks", "export", "{new}", "--task", "0", "--out", "{in}/x.pt"],
        "no such store",
    ),
    (
        "merge-missing-store",
        ["masks", "merge", "{new}", "--tasks", "0,1", "--rule", "and"],
        "no such store",
    ),
    ("info-a-file", ["info", "{in}/notes.txt"], "not a readable Zarr v3 group"),
    ("info-an-empty-folder", ["info", "{in}/empty"], "not a readable Zarr v3 group"),
    (
        "train-into-a-file",
        ["train-task", "{in}/notes.txt", "--data", "permuted:1"],
        "not a directory",
    ),
    (
        "train-into-a-full-folder",
        ["train-task", "{in}/texts", "--data", "permuted:1", "--batches", "2"],
        "not empty",
    ),
    ("init-over-a-store", ["init", "{store}"], "already exists"),
    ("copy-missing-store", ["copy", "{new}", "{in}/copy.zarr"], "no such store"),
    ("copy-onto-itself", ["copy", "{store}", "{store}"], "already exists"),
    ("copy-into-a-file", ["copy", "{store}", "{in}/notes.txt"], "not a directory"),
    ("copy-into-itself", ["copy", "{store}", "{store}/inner.zarr"], "inside the store"),
    ("copy-into-a-full-folder", ["copy", "{store}", "{in}/texts"], "not empty"),
    # images and arrays for infer
    ("infer-missing-source", ["infer", "{store}", "{in}/nowhere"], "no such file"),
    ("infer-empty-folder", ["infer", "{store}", "{in}/empty"], "no PNG or JPEG"),
    ("infer-folder-of-text", ["infer", "{store}", "{in}/texts"], "no PNG or JPEG"),
    ("infer-not-an-image", ["infer", "{store}", "{in}/garbage.png"], "cannot read the image"),
    ("infer-empty-image", ["infer", "{store}", "{in}/empty.png"], "cannot read the image"),
    ("infer-image-bomb", ["infer", "{store}", "{in}/bomb.png"], "exceeds limit"),
    ("infer-text-file", ["infer", "{store}", "{in}/notes.txt"], "not a PNG, JPEG or .npy"),
    ("infer-array-wrong-size", ["infer", "{store}", "{in}/wrong.npy"], "shape (n, 28, 28)"),
    ("infer-array-empty", ["infer", "{store}", "{in}/none.npy"], "shape (n, 28, 28)"),
    ("infer-array-of-objects", ["infer", "{store}", "{in}/objects.npy"], "cannot read the array"),
    ("infer-array-lying-header", ["infer", "{store}", "{in}/lying.npy"], "cannot read the array"),
    ("infer-array-nan", ["infer", "{store}", "{in}/nan.npy"], "finite values in [0, 1]"),
    ("infer-array-int64", ["infer", "{store}", "{in}/int64.npy"], "uint8 or float"),
    ("infer-neither-images-nor-data", ["infer", "{store}"], "--data"),
    ("infer-stdin-empty", ["infer", "{store}", "-"], "no paths on stdin"),
    # negative or zero counts
    (
        "train-zero-batches",
        ["train-task", "{new}", "--data", "permuted:1", "--batches", "0"],
        "batches must be in",
    ),
    (
        "train-negative-batches",
        ["train-task", "{new}", "--data", "permuted:1", "--batches", "-3"],
        "batches must be in",
    ),
    (
        "train-tasks-zero-workers",
        ["train-tasks", "{new}", "--data", "permuted:1..2", "--workers", "0"],
        "--workers must be in",
    ),
    (
        "train-tasks-unknown-device",
        ["train-tasks", "{new}", "--data", "permuted:1", "--devices", "cpu,gpu0"],
        "unknown device 'gpu0'",
    ),
    (
        "train-tasks-into-a-file",
        ["train-tasks", "{in}/notes.txt", "--data", "permuted:1"],
        "not a directory",
    ),
    (
        "train-tasks-other-arch",
        ["train-tasks", "{store}", "--data", "permuted:9", "--arch", "fc-1024-1024"],
        "fc-1024-1024",
    ),
    (
        "train-zero-batch-size",
        ["train-task", "{new}", "--data", "permuted:1", "--batch-size", "0"],
        "batch size",
    ),
    (
        "train-zero-outputs",
        ["train-task", "{new}", "--data", "permuted:1", "--outputs", "0"],
        "outputs must be",
    ),
    (
        "train-negative-seed",
        ["train-task", "{new}", "--data", "permuted:1", "--seed", "-1"],
        "seed must be",
    ),
    (
        "train-zero-density",
        ["train-task", "{new}", "--data", "permuted:1", "--density", "0"],
        "density must be in (0, 1]",
    ),
    (
        "train-density-above-one",
        ["train-task", "{new}", "--data", "permuted:1", "--density", "1.5"],
        "density must be in",
    ),
    (
        "train-negative-lr",
        ["train-task", "{new}", "--data", "permuted:1", "--lr", "-0.1"],
        "learning rate",
    ),
    ("init-zero-outputs", ["init", "{new}", "--outputs", "0"], "outputs must be"),
    # out-of-range task ids
    ("eval-task-too-big", ["eval", "{store}", "--task", "3"], "out of range"),
    ("eval-task-negative", ["eval", "{store}", "--task", "-1"], "out of range"),
    ("overlap-task-too-big", ["masks", "overlap", "{store}", "--tasks", "0,7"], "out of range"),
    (
        "overlap-task-not-a-number",
        ["masks", "overlap", "{store}", "--tasks", "a,b"],
        "task indices",
    ),
    (
        "export-task-too-big",
        ["masks", "export", "{store}", "--task", "3", "--out", "{in}/x.pt"],
        "out of range",
    ),
    (
        "merge-task-too-big",
        ["masks", "merge", "{store}", "--tasks", "0,9", "--rule", "and"],
        "out of range",
    ),
    # unknown names: architecture, data spec, method, objective, rule, device, scenario
    (
        "train-unknown-arch",
        ["train-task", "{new}", "--data", "permuted:1", "--arch", "vgg"],
        "unknown architecture",
    ),
    (
        "train-arch-contradicts-store",
        ["train-task", "{store}", "--data", "permuted:4", "--arch", "fc-1024-1024"],
        "contradicts the store",
    ),
    ("train-unknown-data-kind", ["train-task", "{new}", "--data", "mnist:1"], "invalid data spec"),
    (
        "train-bad-permutation",
        ["train-task", "{new}", "--data", "permuted:-2"],
        "invalid data spec",
    ),
    ("train-split-out-of-range", ["train-task", "{new}", "--data", "split:9"], "split:I"),
    (
        "train-unknown-rule",
        ["train-task", "{new}", "--data", "permuted:1", "--mask-rule", "rand"],
        "unknown mask rule",
    ),
    (
        "train-unknown-device",
        ["train-task", "{new}", "--data", "permuted:1", "--device", "tpu"],
        "unknown device",
    ),
    ("eval-unknown-data", ["eval", "{store}", "--data", "fashion:1"], "valid forms"),
    (
        "eval-unknown-scenario",
        ["eval", "{store}", "--task", "0", "--scenario", "XY"],
        "unknown scenario",
    ),
    (
        "eval-unknown-method",
        ["eval", "{store}", "--scenario", "GNu", "--method", "guess"],
        "unknown inference method",
    ),
    (
        "infer-unknown-method",
        ["infer", "{store}", "--data", "permuted:1", "--method", "guess"],
        "unknown inference method",
    ),
    (
        "infer-unknown-objective",
        ["infer", "{store}", "--data", "permuted:1", "--objective", "Z"],
        "unknown objective",
    ),
    (
        "infer-unknown-per",
        ["infer", "{store}", "--data", "permuted:1", "--per", "pixel"],
        "unknown --per",
    ),
    ("infer-unknown-data", ["infer", "{store}", "--data", "rotated:x"], "valid forms"),
    (
        "merge-unknown-rule",
        ["masks", "merge", "{store}", "--tasks", "0,1", "--rule", "xor"],
        "unknown merge rule",
    ),
    # the commands that write: allocate, hopfield-encode, pack; and plot
    ("allocate-unknown-data", ["allocate", "{new}", "--data", "mnist:1"], "invalid data spec"),
    (
        "allocate-zero-budget",
        ["allocate", "{new}", "--data", "permuted:1", "--budget", "0"],
        "budget must be in",
    ),
    (
        "allocate-negative-epsilon",
        ["allocate", "{new}", "--data", "permuted:1", "--epsilon", "-1"],
        "epsilon must be in",
    ),
    (
        "allocate-zero-check-every",
        ["allocate", "{new}", "--data", "permuted:1", "--check-every", "0"],
        "check-every",
    ),
    (
        "allocate-unknown-objective",
        ["allocate", "{new}", "--data", "permuted:1", "--objective", "Z"],
        "unknown objective",
    ),
    (
        "allocate-arch-contradicts-store",
        ["allocate", "{store}", "--data", "permuted:1", "--arch", "fc-1024-1024"],
        "contradicts the store",
    ),
    ("hopfield-missing-store", ["hopfield-encode", "{new}"], "no such store"),
    ("hopfield-network-too-big", ["hopfield-encode", "{store}"], "at most 16,384 bits"),
    (
        "hopfield-bad-task-list",
        ["hopfield-encode", "{store}", "--tasks", "x"],
        "indices and ranges",
    ),
    ("pack-missing-store", ["pack", "{new}"], "no such store"),
    ("pack-unknown-codec", ["pack", "{store}", "--codec", "zip"], "unknown codec"),
    ("pack-out-exists", ["pack", "{store}", "--out", "{store}"], "already exists"),
    ("pack-drop-raw-in-place", ["pack", "{store}", "--drop-raw"], "needs --out"),
    ("plot-missing-store", ["plot", "{new}", "--out", "{in}/figures"], "no such store"),
    ("plot-unknown-format", ["plot", "{store}", "--format", "gif"], "unknown figure format"),
    ("plot-missing-report", ["plot", "{store}", "{in}/nowhere.json"], "cannot read an eval report"),
    ("plot-report-not-json", ["plot", "{store}", "{in}/notes.txt"], "cannot read an eval report"),
]


@pytest.fixture(scope="module")
def places(permuted_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A sound store to copy, and a folder of bad inputs."""
    inputs = tmp_path_factory.mktemp("bad-inputs")
    (inputs / "empty").mkdir()
    (inputs / "texts").mkdir()
    (inputs / "texts" / "a.txt").write_text("not a digit")
    (inputs / "notes.txt").write_text("not a store")
    (inputs / "garbage.png").write_bytes(b"not a png at all")
    (inputs / "empty.png").write_bytes(b"")
    Image.new("L", (15_000, 15_000)).save(inputs / "bomb.png")  # 225 Mpixel, 200 KB on disk
    np.save(inputs / "wrong.npy", np.zeros((3, 10, 10), dtype=np.uint8))
    np.save(inputs / "none.npy", np.zeros((0, 28, 28), dtype=np.uint8))
    np.save(inputs / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(inputs / "nan.npy", np.full((2, 28, 28), np.nan, dtype=np.float32))
    np.save(inputs / "int64.npy", np.zeros((2, 28, 28), dtype=np.int64))
    with (inputs / "lying.npy").open("wb") as handle:  # claims 730 GiB, holds one image
        header = {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)}
        npy_format.write_array_header_1_0(handle, header)
        handle.write(bytes(784))
    return {"sound": permuted_store, "in": inputs}


@pytest.mark.parametrize(("case", "argv", "says"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(
    case: str, argv: list[str], says: str, places: dict[str, Path], tmp_path: Path
) -> None:
    store = Path(shutil.copytree(places["sound"], tmp_path / "store.zarr"))
    new = tmp_path / "new.zarr"
    names = {"{store}": str(store), "{new}": str(new), "{in}": str(places["in"])}
    args = [names.get(arg, arg) for arg in argv]
    args = [arg.replace("{in}", str(places["in"])).replace("{store}", str(store)) for arg in args]
    before = sorted(p.relative_to(store) for p in store.rglob("*") if p.name != ".supsup.lock")
    result = runner.invoke(app, args, input="")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not new.exists(), "a refused command left a store folder behind"
    after = sorted(p.relative_to(store) for p in store.rglob("*") if p.name != ".supsup.lock")
    assert after == before, "a refused command changed the store"


def test_every_command_is_covered() -> None:
    """Each command and subcommand the app registers has at least one bad-input case."""
    covered = {" ".join(argv[:2]) if argv[0] == "masks" else argv[0] for _, argv, _ in CASES}
    registered = {c.name for c in app.registered_commands}
    registered |= {
        f"{g.typer_instance.info.name} {c.name}"
        for g in app.registered_groups
        for c in g.typer_instance.registered_commands
    }
    missing = registered - covered - {"verify"}  # verify: exit 1 with the problems, tested apart
    assert not missing, f"commands without bad-input cases: {sorted(missing)}"


def test_verify_missing_path_is_exit_2_and_broken_is_exit_1(places: dict[str, Path]) -> None:
    missing = runner.invoke(app, ["verify", str(places["in"] / "nowhere.zarr")])
    assert missing.exit_code == 2 and "no such store" in missing.stderr
    empty = runner.invoke(app, ["verify", str(places["in"] / "empty")])
    assert empty.exit_code == 1 and empty.stdout.startswith("FAIL ")
    assert "Traceback" not in empty.stderr


USAGE_CASES: list[tuple[str, list[str], str]] = [
    ("infer-zero-batch", ["infer", "{store}", "--data", "permuted:1", "--batch", "0"], "--batch"),
    (
        "infer-negative-trials",
        ["infer", "{store}", "--data", "permuted:1", "--trials", "-1"],
        "--trials",
    ),
    ("eval-task-not-a-number", ["eval", "{store}", "--task", "two"], "--task"),
    ("train-without-data", ["train-task", "{store}"], "--data"),
    ("unknown-command", ["train", "{store}"], "No such command"),
    ("unknown-option", ["info", "{store}", "--colour"], "--colour"),
]


@pytest.mark.parametrize(("case", "argv", "says"), USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_errors_name_the_option(
    case: str, argv: list[str], says: str, places: dict[str, Path]
) -> None:
    """Typer's own parsing errors: exit 2, the option named, the usage line, no traceback."""
    args = [str(places["sound"]) if arg == "{store}" else arg for arg in argv]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert says in result.stderr and "Usage:" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
