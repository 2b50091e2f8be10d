"""Stores written by the previous release (tests/fixtures/previous-release) still read, verify
and give the same answers: a change of code layout must not change what a store means."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.learn.taskid import CONFIDENCE_TEMPERATURE
from supsup_cli.store import MaskStore

FIXTURES = Path(__file__).parent / "fixtures" / "previous-release"
STORES = ("lenet", "lenet-v3", "bn")
runner = CliRunner()


@pytest.fixture(params=STORES)
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """A copy of one old store (a reader may take the lock file; the fixture stays untouched)."""
    name = request.param
    copy = tmp_path / f"{name}.zarr"
    shutil.copytree(FIXTURES / f"{name}.zarr", copy)
    return name, copy


def run_json(*args: str) -> dict | list:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else lines


def test_old_stores_read_and_verify(old_store: tuple[str, Path]) -> None:
    name, path = old_store
    store = MaskStore.open(path)
    assert store.task_count == 2 and store.verify() == []
    assert store.header.version == (3 if name == "lenet-v3" else 1)


def test_old_stores_infer_the_same_tasks_and_classes(old_store: tuple[str, Path]) -> None:
    name, path = old_store
    expected = [
        json.loads(line) for line in (FIXTURES / f"{name}.digits.json").read_text().splitlines()
    ]
    digits = str(FIXTURES / "digits.npy")
    per = "batch" if name == "bn" else "image"  # BatchNorm without a task: batch statistics
    got = run_json("infer", str(path), digits, "--per", per, "--json")
    assert [(g["task"], g["class"]) for g in got] == [(e["task"], e["class"]) for e in expected]
    # The recorded confidence was softmax(-score) over these stores' two tasks, the logistic of
    # the margin: the same scores give the same margins, and today's confidence is the logistic
    # of the margin over the temperature.
    recorded = np.array([e["confidence"] for e in expected])
    margins = np.array([g["margin"] for g in got])
    np.testing.assert_allclose(margins, np.log(recorded / (1 - recorded)), atol=1e-3)
    np.testing.assert_allclose(
        [g["confidence"] for g in got],
        1 / (1 + np.exp(-margins / CONFIDENCE_TEMPERATURE)),
        atol=1e-5,
    )


def test_old_stores_answer_labelled_batches_as_before(old_store: tuple[str, Path]) -> None:
    name, path = old_store
    expected = json.loads((FIXTURES / f"{name}.infer.json").read_text())
    specs = ",".join(spec["data"] for spec in expected["specs"])
    got = run_json("infer", str(path), "--data", specs, "--trials", "5", "--json")
    assert got["task_accuracy"] == expected["task_accuracy"]
    assert got["class_accuracy"] == pytest.approx(expected["class_accuracy"], abs=1e-6)


def test_old_stores_evaluate_as_before(old_store: tuple[str, Path]) -> None:
    name, path = old_store
    expected = json.loads((FIXTURES / f"{name}.eval.json").read_text())["tasks"]
    got = run_json("eval", str(path), "--json")["tasks"]
    assert [(t["task"], t["data"]) for t in got] == [(t["task"], t["data"]) for t in expected]
    assert [t["accuracy"] for t in got] == pytest.approx([t["accuracy"] for t in expected])
