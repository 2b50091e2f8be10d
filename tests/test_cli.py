"""The foundation commands through Typer's CliRunner, including every error of the issue."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.store import MaskStore
from supsup_cli.store.layout import ATTRIBUTE_KEY

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def tree_snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def store_copy(tmp_path: Path, permuted_store: Path) -> Path:
    path = tmp_path / "s.zarr"
    shutil.copytree(permuted_store, path)
    return path


def test_train_task_creates_then_appends(tmp_path: Path) -> None:
    path = tmp_path / "new.zarr"
    first = run("train-task", path, "--data", "permuted:17", "--batches", "40", "--json")
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    assert payload["created_store"] and payload["index"] == 0 and payload["data"] == "permuted:17"
    assert payload["mask_bytes"] == 33_275 and 0 <= payload["accuracy"] <= 1
    second = run("train-task", path, "--data", "permuted:18", "--batches", "40", "--quiet")
    assert second.exit_code == 0 and second.stdout == ""
    assert MaskStore.open(path).task_count == 2


def test_info_eval_verify(store_copy: Path) -> None:
    info = json.loads(run("info", store_copy, "--json").stdout)
    assert info["task_count"] == 3 and info["mask_bytes_per_task"] == 33_275
    assert info["network"] == {"arch": "lenet-300-100", "inputs": 784, "outputs": 10, "seed": 0}
    assert [t["data"] for t in info["tasks"]] == ["permuted:1", "permuted:2", "permuted:3"]
    human = run("info", store_copy)
    assert human.exit_code == 0 and "permuted:3" in human.stdout and "33,275" in human.stdout
    # Piped output keeps each line whole (rich would fold at 80 columns): scripts grep it.
    network_line = next(line for line in human.stdout.splitlines() if line.startswith("network"))
    assert len(network_line) > 80 and network_line.endswith("bytes per task")
    by_index = json.loads(
        run("eval", store_copy, "--data", "permuted:2", "--task", "1", "--json").stdout
    )
    by_spec = json.loads(run("eval", store_copy, "--data", "permuted:2", "--json").stdout)
    assert by_index == by_spec and by_index["task"] == 1
    assert by_index["accuracy"] == pytest.approx(info["tasks"][1]["accuracy"], abs=1e-6)
    ok = run("verify", store_copy)
    assert ok.exit_code == 0 and ok.stdout.startswith("ok")


def test_verify_reports_damage_with_exit_1(store_copy: Path) -> None:
    group = zarr.open_group(str(store_copy), mode="r+")
    row = group["masks"][2]
    row[0] ^= 1
    group["masks"][2] = row
    result = run("verify", store_copy, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problems"] == ["task 2: mask bytes do not match their sha256"]


def test_missing_path_and_not_a_store(tmp_path: Path) -> None:
    assert_one_line_error(run("info", tmp_path / "nowhere.zarr"), "no such store")
    assert_one_line_error(run("verify", tmp_path / "nowhere.zarr"), "no such store")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    assert_one_line_error(run("eval", folder, "--task", "0"), "not a readable Zarr")
    assert_one_line_error(
        run("train-task", folder, "--data", "permuted:1", "--batches", "2"), "not empty"
    )
    assert (folder / "a.txt").read_text() == "x"


def test_unknown_format_version(store_copy: Path) -> None:
    group = zarr.open_group(str(store_copy), mode="r+")
    group.attrs[ATTRIBUTE_KEY] = dict(group.attrs[ATTRIBUTE_KEY], version=9)
    assert_one_line_error(run("info", store_copy), "version 9 is newer")


def test_store_of_another_network_is_left_unchanged(store_copy: Path) -> None:
    before = tree_snapshot(store_copy)
    for option, value in [
        ("--arch", "fc-1024-1024"),
        ("--outputs", "100"),
        ("--seed", "1"),
        ("--density", "0.1"),
        ("--mask-rule", "sign"),
    ]:
        result = run(
            "train-task", store_copy, "--data", "permuted:9", "--batches", "2", option, value
        )
        assert_one_line_error(result, f"{option} {value} contradicts the store")
    assert tree_snapshot(store_copy) == before


def test_bad_data_spec_and_density(store_copy: Path, tmp_path: Path) -> None:
    before = tree_snapshot(store_copy)
    assert_one_line_error(run("train-task", store_copy, "--data", "permutd:3"), "valid forms")
    assert_one_line_error(
        run("eval", store_copy, "--data", "rotated:x", "--task", "0"), "valid forms"
    )
    for density in ("0", "1.5", "-0.2"):
        result = run(
            "train-task", tmp_path / "d.zarr", "--data", "permuted:1", "--density", density
        )
        assert_one_line_error(result, "density must be in (0, 1]")
    assert not (tmp_path / "d.zarr").exists()
    assert tree_snapshot(store_copy) == before


def test_task_out_of_range_and_bad_numbers(store_copy: Path, tmp_path: Path) -> None:
    assert_one_line_error(run("eval", store_copy, "--task", "7"), "out of range")
    assert_one_line_error(run("eval", store_copy, "--data", "permuted:40"), "no task")
    for option, value in [
        ("--batches", "0"),
        ("--batch-size", "-1"),
        ("--lr", "0"),
        ("--outputs", "0"),
        ("--arch", "resnet-7"),
        ("--device", "tpu"),
    ]:
        extra = ["--batches", "2"] if option != "--batches" else []
        result = run(
            "train-task", tmp_path / "n.zarr", "--data", "permuted:1", option, value, *extra
        )
        assert_one_line_error(result)
    assert not (tmp_path / "n.zarr").exists()


def test_unwritable_path_fails_before_training(tmp_path: Path) -> None:
    # /proc refuses new folders even to root (CI runs as root, where chmod would not stop it)
    result = run("train-task", "/proc/supsup-test.zarr", "--data", "permuted:1", "--batches", "900")
    assert_one_line_error(result, "cannot write here")
    assert_one_line_error(run("init", "/proc/supsup-test.zarr"), "cannot write here")


def test_unwritable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run("train-task", blocker / "s.zarr", "--data", "permuted:1", "--batches", "2")
    assert_one_line_error(result)
    assert blocker.read_text() == "not a folder"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("--debug", "info", tmp_path / "nowhere.zarr")
    assert result.exit_code == 2 and "Traceback" in result.output


def test_help_explains_every_option() -> None:
    result = run("train-task", "--help")
    assert result.exit_code == 0
    for option in (
        "--data",
        "--arch",
        "--outputs",
        "--seed",
        "--mask-rule",
        "--density",
        "--lr",
        "--batch-size",
        "--batches",
        "--transfer",
        "--data-root",
        "--device",
        "--quiet",
        "--json",
    ):
        assert option in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["infer", "s.zarr", "--method", "hopfield", "--data", "split:0", "--steps", "0"],  # the
         # range's wording is typer's (it changed in typer 0.29): ours is the frame around it
         "error: Invalid value for '--steps': .*1.* (see supsup infer --help)"),
        (["train-task"], "error: Missing argument 'store'. (see supsup train-task --help)"),
        (["bogus"], "error: No such command 'bogus'. (see supsup --help)"),
        (["info", "s.zarr", "--nope"], "error: No such option: --nope (see supsup info --help)"),
        (["masks", "export", "s.zarr", "--json=1"],  # click gives no context here
         "error: Option '--json' does not take a value. (see supsup masks export --help)"),
    ],
)  # fmt: skip
def test_a_bad_command_line_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    """The installed entry point (not the test runner's standalone mode): the parser's own
    errors look like every other error."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "supsup_cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    pattern = re.escape(message).replace(re.escape(".*"), ".*")
    assert re.fullmatch(pattern, done.stderr.strip().replace("python -m supsup_cli", "supsup"))
    assert done.stdout == ""
