"""Many-task evaluation: exact numbers on constructed stores, GNu bookkeeping, report schemas."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import ConfigError, DataSpecError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.learn.data import expand_specs, load_task
from supsup_cli.learn.evaluation import (
    CSV_COLUMNS,
    SCHEMA,
    EvalSettings,
    evaluate_store,
    image_slice,
    parse_counts,
)
from supsup_cli.store import MaskStore

runner = CliRunner()
NET = NetConfig("lenet-300-100", outputs=10, seed=0)


def zero_mask_store(path: Path, specs: list[str], recorded: list[float | None]) -> Path:
    """A store whose masks keep no weight: every logit is 0, so each task predicts its first
    class (argmax takes the first of equal values) and its accuracy is that class's share."""
    store = MaskStore.create(path, NET, "sign", None)
    for spec, accuracy in zip(specs, recorded, strict=True):
        store.append_task(
            np.zeros(NET.mask_bits, dtype=bool),
            torch.zeros(NET.mask_bits),
            data=spec,
            classes=load_task(spec).classes,
            accuracy=accuracy,
            train={},
            created="",
            seconds=None,
        )
    return path


def first_class_share(spec: str, rows: slice = slice(None)) -> float:
    """The exact accuracy of always answering a task's first class, counted from the labels."""
    data = load_task(spec)
    labels = data.test_y[rows].numpy()
    return float(np.count_nonzero(labels == data.classes[0])) / len(labels)


def test_gg_on_constructed_store_gives_exact_known_accuracy(tmp_path: Path) -> None:
    share1, share3 = first_class_share("split:1"), first_class_share("split:3")
    # Task 0 records exactly what it scores (no forgetting); task 1 records 0.5.
    float32_share1 = torch.tensor(share1, dtype=torch.float32).item()
    path = zero_mask_store(tmp_path / "s.zarr", ["split:1", "split:3"], [float32_share1, 0.5])
    report = evaluate_store(path, None, EvalSettings())
    first, second = report.final
    assert (first.task, first.data, second.data) == (0, "split:1", "split:3")
    assert first.accuracy == pytest.approx(share1, abs=1e-7)
    assert second.accuracy == pytest.approx(share3, abs=1e-7)
    assert first.examples == len(load_task("split:1").test_y)
    assert first.forgetting == 0.0
    assert second.forgetting == pytest.approx(0.5 - share3, abs=1e-7)
    summary = report.summary()
    assert summary["accuracy"] == pytest.approx((share1 + share3) / 2, abs=1e-7)
    forgetting = summary["forgetting_vs_training"]
    assert forgetting["mean"] == pytest.approx((0.5 - share3) / 2, abs=1e-7)
    assert forgetting["max"] == pytest.approx(max(0.0, 0.5 - share3), abs=1e-7)
    assert summary["mask_bytes_per_task"] == (NET.mask_bits + 7) // 8
    assert summary["float32_bytes_per_task"] == 4 * NET.mask_bits
    assert report.confusion is None


def test_images_limit_and_spec_selection(tmp_path: Path) -> None:
    path = zero_mask_store(tmp_path / "s.zarr", ["split:1", "split:3"], [None, None])
    report = evaluate_store(path, ["split:3"], EvalSettings(images=37))
    (only,) = report.final
    assert (only.task, only.examples) == (1, 37)
    # Task 1 is tested on images 37..73: tasks made of the same digits see different ones.
    assert only.accuracy == pytest.approx(first_class_share("split:3", slice(37, 74)), abs=1e-7)
    assert report.settings["image_selection"].startswith("task t: test images t*N")
    assert only.forgetting is None  # the record has no accuracy, and a subset is not comparable
    with pytest.raises(ConfigError, match="no task"):
        evaluate_store(path, ["split:0"], EvalSettings())


def test_gnu_bookkeeping_with_a_known_inference(tmp_path: Path) -> None:
    """Inference that always answers the last learned task: task id, accuracy, confusion and the
    checkpoint banks follow exactly."""
    specs = ["split:1", "split:3"]
    path = zero_mask_store(tmp_path / "s.zarr", specs, [None, None])
    seen = []

    def last_task(bank, x):
        seen.append(bank.task_count)
        last = bank.task_count - 1
        return np.full(len(x), last), np.full(len(x), bank.task_classes[last][0])

    settings = EvalSettings(scenario="GNu", checkpoints=(1,))
    report = evaluate_store(path, None, settings, infer=last_task)
    assert seen == [1, 2, 2]  # k = 1: task 0 only; k = 2: both tasks
    counts = [len(load_task(s).test_y) for s in specs]
    first, second = report.final
    assert (first.taskid_accuracy, second.taskid_accuracy) == (0.0, 1.0)
    assert first.accuracy == 0.0  # answered 6 (task 1's first class) on digits 2 and 3
    assert second.accuracy == pytest.approx(first_class_share("split:3"), abs=1e-7)
    assert first.accuracy_gg == pytest.approx(first_class_share("split:1"), abs=1e-7)
    assert report.confusion == [[0, counts[0]], [0, counts[1]]]
    assert [(p.tasks_learned, p.tasks) for p in report.curve] == [(1, 1), (2, 2)]
    early = [s for s in report.scores if s.tasks_learned == 1]
    assert early[0].taskid_accuracy == 1.0  # with one task learned, it is always right
    across = report.summary()["forgetting_across_checkpoints"]
    assert across["tasks_compared"] == 1
    assert across["max"] == pytest.approx(first_class_share("split:1"), abs=1e-7)


def test_gnu_one_shot_finds_trained_permuted_tasks(permuted_store: Path) -> None:
    report = evaluate_store(
        permuted_store, None, EvalSettings(scenario="GNu", batch=128, images=256)
    )
    summary = report.summary()
    assert summary["taskid_accuracy"] >= 0.9
    assert summary["accuracy"] == pytest.approx(summary["accuracy_gg"], abs=0.05)
    assert np.array(report.confusion).sum(axis=1).tolist() == [256, 256, 256]


def test_frozen_masks_measure_zero_forgetting(permuted_store: Path) -> None:
    report = evaluate_store(permuted_store, None, EvalSettings())
    forgetting = report.summary()["forgetting_vs_training"]
    assert forgetting["tasks_compared"] == 3
    assert [s.forgetting for s in report.final] == [0.0, 0.0, 0.0]


def test_image_slices_rotate_and_wrap() -> None:
    assert image_slice(10, None, 3).tolist() == list(range(10))
    assert image_slice(10, 4, 0).tolist() == [0, 1, 2, 3]
    assert image_slice(10, 4, 2).tolist() == [8, 9, 0, 1]
    assert image_slice(10, 12, 5).tolist() == list(range(10))
    covered = {int(i) for task in range(5) for i in image_slice(10, 2, task)}
    assert covered == set(range(10))


def test_settings_are_validated() -> None:
    for bad in (
        {"scenario": "NN"},
        {"scenario": "GNu", "method": "guess"},
        {"scenario": "GNu", "objective": "Q"},
        {"batch": 0},
        {"images": 0},
        {"checkpoints": (0,)},
    ):
        with pytest.raises(ConfigError):
            EvalSettings(**bad)


def test_expand_specs_and_counts() -> None:
    assert expand_specs("permuted:1..3") == ["permuted:1", "permuted:2", "permuted:3"]
    assert expand_specs("permuted:1,3, 5") == ["permuted:1", "permuted:3", "permuted:5"]
    rotations = expand_specs("rotated:0..350:10")
    assert len(rotations) == 36 and rotations[:2] == ["rotated:0", "rotated:10"]
    assert expand_specs("split:0,permuted:4..5") == ["split:0", "permuted:4", "permuted:5"]
    for bad in ("permuted:3..1", "1,2", "permuted:1,,2", "rotated:0..9:0", "permuted:0..999999"):
        with pytest.raises(DataSpecError):
            expand_specs(bad)
    assert parse_counts("1, 5,10..30:10,5") == (1, 5, 10, 20, 30)
    for bad in ("0..x", "5..1", "1..9:0"):
        with pytest.raises(ConfigError):
            parse_counts(bad)


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_json_schema_and_csv_agree(tmp_path: Path) -> None:
    path = zero_mask_store(tmp_path / "s.zarr", ["split:1", "split:3", "split:4"], [None] * 3)
    result = run("eval", path, "--data", "split:1,3..4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == SCHEMA and report["version"] == 1
    assert report["command"].startswith(f"supsup eval {path} --data split:1,3..4")
    assert report["store"]["task_count"] == 3 and len(report["store"]["tasks_sha256"]) == 64
    assert report["store"]["network"] == NET.to_dict()
    assert report["settings"]["scenario"] == "GG" and report["settings"]["method"] is None
    assert [t["task"] for t in report["tasks"]] == [0, 1, 2]
    assert set(report["tasks"][0]) == set(CSV_COLUMNS[:10])
    assert report["curve"][-1]["tasks_learned"] == 3 and report["confusion"] is None
    shares = [first_class_share(s) for s in ("split:1", "split:3", "split:4")]
    assert report["summary"]["accuracy"] == pytest.approx(sum(shares) / 3, abs=1e-7)

    table = run("eval", path, "--data", "split:1,3..4", "--csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 3
    assert {r["store_tasks_sha256"] for r in rows} == {report["store"]["tasks_sha256"]}
    assert [float(r["accuracy"]) for r in rows] == [t["accuracy"] for t in report["tasks"]]
    assert rows[0]["taskid_accuracy"] == "" and rows[0]["command"].endswith("--csv")


def test_cli_gnu_csv_has_a_row_per_checkpoint_cell(permuted_store: Path) -> None:
    result = run(
        "eval",
        permuted_store,
        "--scenario",
        "GNu",
        "--images",
        "128",
        "--checkpoints",
        "1,2",
        "--csv",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["tasks_learned"], r["task"]) for r in rows] == [
        ("1", "0"),
        ("2", "0"),
        ("2", "1"),
        ("3", "0"),
        ("3", "1"),
        ("3", "2"),
    ]
    assert {r["scenario"] for r in rows} == {"GNu"} and {r["batch"] for r in rows} == {"128"}


def test_cli_single_task_gg_keeps_its_one_line_forms(permuted_store: Path) -> None:
    result = run("eval", permuted_store, "--data", "permuted:2", "--task", "1", "--json")
    assert set(json.loads(result.stdout)) == {
        "store",
        "task",
        "data",
        "tested_on",
        "accuracy",
        "examples",
        "scenario",
    }
    human = run("eval", permuted_store, "--data", "permuted:2")
    assert human.exit_code == 0 and human.stdout.startswith("task 1 on permuted:2: accuracy")


def test_cli_errors_are_one_line(permuted_store: Path) -> None:
    for args, message in [
        (("--scenario", "XY"), "unknown scenario"),
        (("--scenario", "GNu", "--objective", "G"), "superfluous"),
        (("--data", "permuted:1..9"), "no task"),
        (("--checkpoints", "2..1"), "task counts"),
    ]:
        result = run("eval", permuted_store, *args)
        assert result.exit_code == 2 and "error:" in result.output, (args, result.output)
        assert message in result.output
    both = run("eval", permuted_store, "--json", "--csv")
    assert both.exit_code != 0 and both.stdout == ""
