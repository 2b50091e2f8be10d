"""What a new user tripped on (issue 19): merged tasks in eval, reports of other stores in plot,
a spec trained twice (and the first example grown twice: test_examples.py), the reported format
version, flags in help, empty stores, Ctrl-C."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from supsup_cli.cli import app, main
from supsup_cli.errors import DataSpecError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.learn import train as train_module
from supsup_cli.learn.data import load_task, source_specs
from supsup_cli.learn.evaluation import EvalSettings, evaluate_store
from supsup_cli.learn.score_optimizers import ScoreOptimizer
from supsup_cli.learn.train import CreationOptions, TrainConfig, TrainingInterrupted, train_task
from supsup_cli.store import MaskStore

runner = CliRunner()
NET = NetConfig("lenet-300-100", outputs=10, seed=0)
NO_TASKS = "the store holds no tasks"


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def random_store(path: Path, specs: list[str], seed: int = 0, version: int = 4) -> Path:
    """Seeded random masks on real specs: evaluable in a second, no training."""
    rng = np.random.default_rng(seed)
    store = MaskStore.create(path, NET, "topk", 0.5, version=version)
    for spec in specs:
        store.append_task(
            rng.random(NET.mask_bits) < 0.5,
            torch.zeros(NET.mask_bits),
            data=spec,
            classes=load_task(spec).classes,
            accuracy=None,
            train={},
            created="",
            seconds=None,
        )
    return path


# 1. A merged task is tested on the data of the tasks it came from.


def test_merged_tasks_are_evaluated_on_their_sources(tmp_path: Path) -> None:
    store = random_store(tmp_path / "s.zarr", ["split:0", "split:1", "split:2"])
    merged = run("masks", "merge", store, "--tasks", "0,1", "--rule", "and")
    assert merged.exit_code == 0, merged.output

    whole = run("eval", store, "--json")
    assert whole.exit_code == 0, whole.output
    tasks = {t["task"]: t for t in json.loads(whole.stdout)["tasks"]}
    assert sorted(tasks) == [0, 1, 2, 3]
    assert tasks[3]["data"] == "merge:0,1:and" and tasks[3]["tested_on"] == "split:0+split:1"
    assert tasks[0]["tested_on"] == tasks[0]["data"] == "split:0"
    assert tasks[3]["examples"] == tasks[0]["examples"] + tasks[1]["examples"]

    # The merged mask on the concatenation is the size-weighted mean of it on each source.
    alone = run("eval", store, "--task", "3", "--json")
    assert alone.exit_code == 0, alone.output
    result = json.loads(alone.stdout)
    assert result["tested_on"] == "split:0+split:1"
    assert result["accuracy"] == pytest.approx(tasks[3]["accuracy"], abs=1e-6)
    parts = [
        json.loads(run("eval", store, "--task", 3, "--data", s, "--json").stdout)
        for s in ("split:0", "split:1")
    ]
    weighted = sum(p["accuracy"] * p["examples"] for p in parts) / sum(p["examples"] for p in parts)
    assert result["accuracy"] == pytest.approx(weighted, abs=1e-6)
    human = run("eval", store, "--task", "3")
    assert human.exit_code == 0 and "merge:0,1:and (split:0+split:1)" in human.stdout

    gnu = run("eval", store, "--scenario", "GNu", "--images", "40", "--json")
    assert gnu.exit_code == 0, gnu.output
    assert [t["tested_on"] for t in json.loads(gnu.stdout)["tasks"]][3] == "split:0+split:1"
    table = run("eval", store, "--images", "40")
    assert table.exit_code == 0 and "merge:0,1:and on split:0+split:1" in table.stdout


def test_merges_of_merges_resolve_to_each_source_once() -> None:
    stored = ["split:0", "split:1", "merge:0,1:and", "split:2", "merge:2,3,0:or"]
    assert source_specs(stored, 4) == ("split:0", "split:1", "split:2")
    assert source_specs(stored, 3) == ("split:2",)
    chain = ["split:0", "split:1"] + [f"merge:{i - 1},{i - 2}:and" for i in range(2, 400)]
    assert source_specs(chain, 399) == ("split:1", "split:0")  # each task visited once
    with pytest.raises(DataSpecError, match="do not precede"):
        source_specs(["merge:0,1:and", "split:1"], 0)


# 4. A report of another store is refused unless asked for.


def test_plot_refuses_a_report_of_another_store(tmp_path: Path) -> None:
    ours = random_store(tmp_path / "ours.zarr", ["split:0", "split:1"])
    theirs = random_store(tmp_path / "theirs.zarr", ["split:0", "split:1"], seed=1)
    settings = EvalSettings(images=20)
    own, other = tmp_path / "own.json", tmp_path / "other.json"
    own.write_text(json.dumps(evaluate_store(ours, None, settings).to_dict()))
    other.write_text(json.dumps(evaluate_store(theirs, None, settings).to_dict()))

    refused = run("plot", ours, own, other, "--out", tmp_path / "f1")
    one_line_error(refused, str(other), "another store", "--allow-other-store")
    assert not (tmp_path / "f1").exists()
    allowed = run("plot", ours, own, other, "--out", tmp_path / "f2", "--allow-other-store")
    assert allowed.exit_code == 0, allowed.output

    # The same store moved, or grown since the report: still its report.
    moved = Path(shutil.copytree(ours, tmp_path / "moved.zarr"))
    MaskStore.open(moved).append_task(
        np.ones(NET.mask_bits, dtype=bool),
        torch.zeros(NET.mask_bits),
        data="split:2",
        classes=(4, 5),
        accuracy=None,
        train={},
        created="",
        seconds=None,
    )
    grown = run("plot", moved, own, "--out", tmp_path / "f3")
    assert grown.exit_code == 0, grown.output


# 5. The same data spec twice needs --again.


def test_a_spec_already_in_the_store_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s.zarr"
    first = run("train-task", store, "--data", "permuted:3", "--batches", "2", "--quiet")
    assert first.exit_code == 0, first.output
    before = tree(store)

    def no_training(*args, **kwargs):
        raise AssertionError("trained a spec the store already holds")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "train_mask", no_training)
        again = run("train-task", store, "--data", "permuted:3", "--batches", "2", "--quiet")
    one_line_error(again, "permuted:3", "task 0", "--again")
    assert tree(store) == before
    forced = run("train-task", store, "--data", "permuted:3", "--batches", "2", "--again", "--json")
    assert forced.exit_code == 0, forced.output
    assert [r.data for r in MaskStore.open(store).tasks()] == ["permuted:3", "permuted:3"]


# 6. The report gives the store's own format version.


def test_eval_reports_the_stores_format_version(tmp_path: Path) -> None:
    # an older-layout store: its own version, not the newest this release reads (4)
    store = random_store(tmp_path / "s.zarr", ["split:0", "split:1"], version=1)
    info = json.loads(run("info", store, "--json").stdout)
    report = run("eval", store, "--images", "20", "--json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["store"]["format_version"] == info["format_version"] == 1


# 7. Flags show as flags.


@pytest.mark.parametrize(
    "command", [["info"], ["eval"], ["train-task"], ["plot"], ["pack"], ["masks", "overlap"], []]
)
def test_help_shows_flags_without_a_value(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    flag = "--debug" if not command else "--json"
    assert re.search(rf"{flag} +(Print|Show)", result.output), result.output
    assert re.search(r"--help +Show this message", result.output), result.output


def test_a_flag_takes_no_value(tmp_path: Path) -> None:
    store = random_store(tmp_path / "s.zarr", ["split:0"])
    result = run("info", store, "--json", "true")  # a usage error: main() makes it one line
    assert result.exit_code == 2 and "extra argument" in result.output and result.stdout == ""


# 8. Empty stores say so.


@pytest.mark.parametrize(
    "command",
    [
        ["pack", "{store}"],
        ["pack", "{store}", "--out", "{store}-packed", "--drop-raw"],
        ["masks", "overlap", "{store}"],
        ["plot", "{store}", "--out", "{store}-figures"],
        ["eval", "{store}"],
    ],
)
def test_commands_on_an_empty_store_say_no_tasks(command: list[str], tmp_path: Path) -> None:
    store = random_store(tmp_path / "empty.zarr", [])
    result = run(*(word.format(store=store) for word in command))
    one_line_error(result, f"{store}: {NO_TASKS}; train one first")
    assert not (tmp_path / "empty.zarr-packed").exists()
    assert not (tmp_path / "empty.zarr-figures").exists()


# 10. Ctrl-C while training says what was kept.


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Ctrl-C as the optimizer takes its `step`-th step (deterministic: no signal, no timing)."""
    calls = [0]
    real = ScoreOptimizer.step

    def step_or_interrupt(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ScoreOptimizer, "step", step_or_interrupt)


def test_ctrl_c_while_training_says_nothing_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = random_store(tmp_path / "s.zarr", ["split:0"])
    before = tree(store)
    interrupt_at_step(monkeypatch, 3)
    result = run("train-task", store, "--data", "split:1", "--batches", "10")
    assert result.exit_code == 130, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"interrupted: nothing of the task on split:1 was kept; {store} is as it was"]
    assert result.stdout == "" and tree(store) == before

    new = tmp_path / "new.zarr"
    interrupt_at_step(monkeypatch, 2)  # counts afresh
    with pytest.raises(TrainingInterrupted) as caught:
        train_task(new, "split:2", CreationOptions(), TrainConfig(batches=10))
    assert caught.value.spec == "split:2" and not caught.value.store_existed
    assert not new.exists()


def test_ctrl_c_exits_130_from_the_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "new.zarr"
    interrupt_at_step(monkeypatch, 1)
    argv = ["supsup", "train-task", str(store), "--data", "split:1", "--batches", "5"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 130
    expected = f"interrupted: nothing of the task on split:1 was kept; {store} was not created"
    assert capsys.readouterr().err.strip() == expected
    assert not store.exists()
