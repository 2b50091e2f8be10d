"""`supsup pack` and `supsup masks ...` through the CLI: results, transparency, bad input."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.store import MaskStore

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(permuted_store: Path, tmp_path: Path) -> Path:
    """A private copy of the 3-task trained store."""
    copy = tmp_path / "store.zarr"
    shutil.copytree(permuted_store, copy)
    return copy


@pytest.fixture(scope="module")
def small(permuted_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained store packed with --drop-raw (made by the CLI)."""
    out = tmp_path_factory.mktemp("packed") / "small.zarr"
    code, stdout, _ = run("pack", permuted_store, "--out", out, "--drop-raw", "--json")
    assert code == 0 and json.loads(stdout)["raw_dropped"] is True
    return out


def test_pack_in_place_prints_bits_per_weight_against_h2(store: Path) -> None:
    code, stdout, _ = run("pack", store)
    assert code == 0
    assert "bits/weight" in stdout and "H2(density)" in stdout and "raw masks kept" in stdout
    code, stdout, _ = run("pack", store, "--json", "--codec", "range-site-prev")
    report = json.loads(stdout)
    assert code == 0 and report["codec"] == "range-site-prev"
    assert [t["task"] for t in report["tasks"]] == [0, 1, 2]
    for task in report["tasks"]:  # density-0.5 masks: about one bit, never far above
        assert task["h2"] <= task["bits_per_weight"] < task["h2"] + 0.01
    assert MaskStore.open(store).verify() == []


def test_drop_raw_store_gives_the_same_answers(permuted_store: Path, small: Path) -> None:
    for command in (["eval", "--task", "1", "--json"], ["infer", "--data", "permuted:2", "--json"]):
        code_raw, raw, _ = run(command[0], permuted_store, *command[1:])
        code_small, packed, _ = run(command[0], small, *command[1:])
        assert code_raw == code_small == 0
        expected, got = json.loads(raw), json.loads(packed)
        expected.pop("store"), got.pop("store")
        assert got == expected
    code, stdout, _ = run("verify", small)
    assert code == 0 and stdout.startswith("ok")
    code, stdout, _ = run("info", small, "--json")
    assert code == 0 and json.loads(stdout)["task_count"] == 3
    raw_chunks = [p for p in (small / "masks").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert raw_chunks == []  # density-0.5 masks: about as large packed, but only once


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--codec", "huffman"], "unknown codec 'huffman'; valid codecs: auto, range-site"),
        (["--drop-raw"], "--drop-raw needs --out"),
    ],
)
def test_pack_bad_options(store: Path, extra: list[str], message: str) -> None:
    code, stdout, stderr = run("pack", store, *extra)
    assert code == 2 and message in " ".join(stderr.split()) and stdout == ""
    assert MaskStore.open(store).header.packed is None


def test_pack_refuses_an_existing_out(store: Path, small: Path) -> None:
    before = sorted(p.name for p in small.iterdir())
    code, _, stderr = run("pack", store, "--out", small, "--drop-raw")
    assert code == 2 and "already exists" in stderr
    assert sorted(p.name for p in small.iterdir()) == before
    code, _, stderr = run("pack", small)
    assert code == 2 and "raw masks were dropped" in stderr


def test_overlap_table_csv_and_json_agree(small: Path) -> None:
    code, table, _ = run("masks", "overlap", small)
    assert code == 0 and "Jaccard" in table
    code, text, _ = run("masks", "overlap", small, "--csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    code_json, payload, _ = run("masks", "overlap", small, "--json")
    result = json.loads(payload)
    assert code == code_json == 0 and len(rows) == 9 and result["tasks"] == [0, 1, 2]
    masks = np.stack([MaskStore.open(small).read_mask(i) for i in range(3)]).astype(np.int64)
    for row in rows:
        a, b = int(row["task_a"]), int(row["task_b"])
        assert int(row["shared"]) == int(masks[a] @ masks[b]) == result["shared"][a][b]
        assert int(row["hamming"]) == int(np.sum(masks[a] != masks[b])) == result["hamming"][a][b]
        assert float(row["jaccard"]) == pytest.approx(result["jaccard"][a][b], abs=1e-6)
    code, _, stderr = run("masks", "overlap", small, "--csv", "--json")
    assert code == 2 and "choose one" in stderr
    code, _, stderr = run("masks", "overlap", small, "--tasks", "0,5")
    assert code == 2 and "task 5 is out of range" in stderr
    code, _, stderr = run("masks", "overlap", small, "--tasks", "0,x")
    assert code == 2 and "comma-separated" in stderr


def test_merge_appends_a_derived_task(store: Path) -> None:
    code, stdout, _ = run(
        "masks", "merge", store, "--tasks", "0,1,2", "--rule", "majority", "--json"
    )
    record = json.loads(stdout)
    assert code == 0 and record["index"] == 3 and record["data"] == "merge:0,1,2:majority"
    assert record["train"]["parents"] == [0, 1, 2]
    code, stdout, _ = run("eval", store, "--task", "3", "--data", "permuted:1", "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] > 0.2  # well above chance (0.1)
    for args, message in (
        (["--tasks", "0,9", "--rule", "and"], "task 9 is out of range"),
        (["--tasks", "0,1", "--rule", "xor"], "unknown merge rule 'xor'"),
        (["--tasks", "0", "--rule", "or"], "at least two distinct tasks"),
    ):
        code, _, stderr = run("masks", "merge", store, *args)
        assert code == 2 and message in stderr
    assert MaskStore.open(store).task_count == 4


def test_merge_works_on_a_drop_raw_store(small: Path, tmp_path: Path) -> None:
    copy = tmp_path / "small.zarr"
    shutil.copytree(small, copy)
    code, _, _ = run("masks", "merge", copy, "--tasks", "0,2", "--rule", "or")
    reopened = MaskStore.open(copy)
    assert code == 0 and reopened.header.packed.dropped  # raw masks still dropped (version 4)
    assert np.array_equal(reopened.read_mask(3), reopened.read_mask(0) | reopened.read_mask(2))
    assert reopened.verify() == []


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_export_writes_loadable_tensors(small: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"task2{suffix}"
    code, stdout, _ = run("masks", "export", small, "--task", "2", "--out", out, "--json")
    result = json.loads(stdout)
    assert code == 0 and result["out"] == str(out) and out.exists()
    if suffix == ".pt":
        tensors = torch.load(out, weights_only=True)
        kept = sum(int(torch.count_nonzero(t)) for t in tensors.values())
    else:
        with np.load(out, allow_pickle=False) as archive:
            kept = sum(int(np.count_nonzero(archive[k])) for k in archive.files)
    assert kept == result["kept"] == int(MaskStore.open(small).read_mask(2).sum())
    code, _, stderr = run("masks", "export", small, "--task", "2", "--out", out)
    assert code == 2 and "already exists" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "3", "--out", "t.pt"], "task 3 is out of range"),
        (["--task", "0", "--out", "t.pickle"], "must end in .pt or .npz"),
    ],
)
def test_export_bad_input(small: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [str(tmp_path / a) if a.startswith("t.") else a for a in args]
    code, _, stderr = run("masks", "export", small, *args)
    assert code == 2 and message in stderr
    assert list(tmp_path.iterdir()) == []
