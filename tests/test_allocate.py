"""allocate: the stream loop, audit log, budget and concurrent writers (the rule alone:
test_allocate_rule.py)."""

from __future__ import annotations

import math
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_cli.errors import ConfigError, DataSpecError, StoreError, StoreMismatchError
from supsup_cli.learn.allocate import allocate_stream
from supsup_cli.learn.allocate_config import AllocateConfig, AuditRow, parse_stream
from supsup_cli.learn.allocate_masks import resumed_scores
from supsup_cli.learn.allocate_rule import (
    ALLOCATE,
    BUDGET,
    CONTINUE,
    DECISIONS,
    REASON_FIRST,
    REASON_FRESH,
    REUSE,
)
from supsup_cli.learn.train import CreationOptions, TrainConfig, train_task
from supsup_cli.model.supermask import ScoreMasks, kaiming_uniform_scores
from supsup_cli.store import MaskStore

EPS = 0.125  # the default epsilon, as the runs below use it


# -- configuration and the stream spec -------------------------------------------------------------


def test_parse_stream_keeps_order_and_repeats():
    assert parse_stream("permuted:1,2,1,3,2") == [f"permuted:{i}" for i in (1, 2, 1, 3, 2)]
    assert parse_stream("permuted:1, rotated:30") == ["permuted:1", "rotated:30"]
    with pytest.raises(DataSpecError):
        parse_stream("permuted:1,,2")
    with pytest.raises(DataSpecError):
        parse_stream("bogus:1")


@pytest.mark.parametrize(
    "bad",
    [
        {"batches_per_segment": 0},
        {"check_every": 0},
        {"epsilon": -1.0},
        {"budget": 0},
        {"objective": "Q"},
        {"lr": 0.0},
        {"batch_size": 0},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        AllocateConfig(**bad)


@pytest.mark.parametrize("rule", ["sign", "topk"])
def test_resumed_scores_give_back_the_mask(rule):
    generator = torch.Generator().manual_seed(3)
    shapes = [(30, 20), (10, 30)]
    density = 0.3 if rule == "topk" else None
    original = ScoreMasks([kaiming_uniform_scores(s, generator) for s in shapes], rule, density)
    bits = original.mask_bits()
    resumed = ScoreMasks(resumed_scores(bits, shapes), rule, density)
    assert np.array_equal(resumed.mask_bits(), bits)
    for scores, shape in zip(resumed.scores, shapes, strict=True):
        assert scores.abs().max() <= 1 / math.sqrt(shape[1]) + 1e-7


def test_audit_row_round_trip():
    row = AuditRow(100, 0, "permuted:1", CONTINUE, 0, 0.5, 0.225, 5, "", "t")
    assert AuditRow.from_dict(row.to_dict() | {"unknown": 1}) == row
    assert set(DECISIONS) == {ALLOCATE, CONTINUE, REUSE, BUDGET}


# -- the stream loop (small: segments of 30 batches of 32, a check every 10) -----------------------

QUICK = AllocateConfig(batches_per_segment=30, check_every=10, batch_size=32)


def read_log(path: Path) -> list[AuditRow]:
    return [AuditRow.from_dict(row) for row in MaskStore.open(path).read_log()]


def test_first_batch_allocates_into_a_new_sign_store(tmp_path):
    path = tmp_path / "s.zarr"
    outcome = allocate_stream(path, "permuted:1", QUICK)
    store = MaskStore.open(path)
    assert outcome.created_store and store.header.mask_rule == "sign"
    assert store.net.outputs == 100 and store.task_count >= 1
    assert outcome.decisions[0].decision == ALLOCATE
    assert outcome.decisions[0].reason == REASON_FIRST and outcome.decisions[0].p is None
    assert outcome.batches_trained == 30
    # The log in the store is exactly what the run decided, in order.
    assert read_log(path) == list(outcome.decisions)
    assert [r.batch for r in outcome.decisions] == [0, 10, 20]
    assert store.verify() == []


def test_audit_log_contents(tmp_path):
    path = tmp_path / "s.zarr"
    outcome = allocate_stream(path, "permuted:1,2", QUICK)
    rows = read_log(path)
    assert rows == list(outcome.decisions)
    assert [(r.batch, r.segment, r.data) for r in rows] == [
        (0, 0, "permuted:1"),
        (10, 0, "permuted:1"),
        (20, 0, "permuted:1"),
        (30, 1, "permuted:2"),
        (40, 1, "permuted:2"),
        (50, 1, "permuted:2"),
    ]
    store = MaskStore.open(path)
    for row in rows[1:]:
        assert row.decision in DECISIONS and row.candidates == max(5, row.candidates)
        assert row.threshold == pytest.approx((1 + EPS) / row.candidates, abs=1e-6)
        assert (row.decision == ALLOCATE) == (row.p < row.threshold or row.reason == REASON_FRESH)
        assert 0 <= row.mask < store.task_count
    allocations = [r.mask for r in rows if r.decision == ALLOCATE]
    assert allocations == list(range(store.task_count)) == list(outcome.allocated)
    assert store.verify() == []
    # Purity from the log: each decision trains its mask on the next check_every batches.
    by_mask, by_spec = defaultdict(Counter), defaultdict(Counter)
    for row in rows:
        by_mask[row.mask][row.data] += QUICK.check_every
        by_spec[row.data][row.mask] += QUICK.check_every
    total = 2 * QUICK.batches_per_segment
    assert outcome.purity == sum(max(c.values()) for c in by_mask.values()) / total
    assert outcome.inverse_purity == sum(max(c.values()) for c in by_spec.values()) / total
    assert [(s.data, s.masks_used) for s in outcome.specs] == [
        (spec, tuple(sorted(by_spec[spec]))) for spec in ("permuted:1", "permuted:2")
    ]


@pytest.mark.parametrize(("commit_every", "revision"), [(1, 3), (3, 1), (10, 0)])
def test_commits_come_every_n_checks_and_at_the_end(tmp_path, commit_every, revision):
    path = tmp_path / "s.zarr"
    config = AllocateConfig(
        batches_per_segment=40, check_every=10, batch_size=32, commit_every=commit_every
    )
    # epsilon 0: only an untrained mask that fits better than mask 0 could allocate; p >= 1/5.
    outcome = allocate_stream(path, "permuted:1", replace_eps(config, 0.0))
    store = MaskStore.open(path)
    assert (
        outcome.masks_after == 1 and [r.decision for r in outcome.decisions[1:]] == [CONTINUE] * 3
    )
    # Checks at batches 10, 20, 30, then the end. Every check: append at 10, replace at 20, 30 and
    # the end (revision 3); every 3rd: append at 30, replace at the end; every 10th: the end only.
    assert store.task(0).revision == revision
    assert store.task(0).train["batches"] == 40
    assert read_log(path) == list(outcome.decisions)


def test_how_often_it_commits_changes_nothing_it_learns(tmp_path):
    runs = []
    for every in (1, 10):
        config = AllocateConfig(
            batches_per_segment=20, check_every=10, batch_size=32, commit_every=every
        )
        outcome = allocate_stream(tmp_path / f"{every}.zarr", "permuted:1,2", config)
        store = MaskStore.open(tmp_path / f"{every}.zarr")
        decisions = [(r.batch, r.decision, r.mask, r.p) for r in outcome.decisions]
        runs.append((decisions, store.read_packed().tobytes(), store.mask_counts().tolist()))
    assert runs[0] == runs[1]


def test_budget_stops_the_run_and_says_so(tmp_path):
    path = tmp_path / "s.zarr"
    # epsilon 4: the threshold (1 + 4)/5 = 1 can never be reached, so every check allocates.
    config = AllocateConfig(
        batches_per_segment=30, check_every=10, batch_size=32, epsilon=4.0, budget=2
    )
    outcome = allocate_stream(path, "permuted:1", config)
    assert outcome.budget_stopped and outcome.masks_after == 2
    assert [r.decision for r in outcome.decisions] == [ALLOCATE, ALLOCATE, BUDGET]
    assert outcome.decisions[-1].mask is None and outcome.batches_trained == 20
    store = MaskStore.open(path)
    assert store.task_count == 2
    assert read_log(path)[-1].decision == BUDGET
    assert store.verify() == []


def test_budget_already_spent_by_an_existing_store(tmp_path, permuted_store):
    path = tmp_path / "copy.zarr"
    shutil.copytree(permuted_store, path)
    config = AllocateConfig(batches_per_segment=10, check_every=10, batch_size=32, budget=3)
    # permuted:9 is new to the store's 3 masks; with epsilon 4 any check wants a new mask.
    outcome = allocate_stream(path, "permuted:9", replace_eps(config, 4.0))
    assert outcome.budget_stopped and outcome.batches_trained == 0
    store = MaskStore.open(path)
    assert store.task_count == 3 and [AuditRow.from_dict(r).decision for r in store.read_log()] == [
        BUDGET
    ]


def replace_eps(config: AllocateConfig, epsilon: float) -> AllocateConfig:
    from dataclasses import replace

    return replace(config, epsilon=epsilon)


def test_works_on_a_store_grown_with_train_task(tmp_path, permuted_store):
    path = tmp_path / "copy.zarr"
    shutil.copytree(permuted_store, path)
    before = MaskStore.open(path)
    old_masks = before.read_packed()
    config = AllocateConfig(batches_per_segment=40, check_every=20, batch_size=64)
    outcome = allocate_stream(path, "permuted:2", config)
    store = MaskStore.open(path)
    assert outcome.masks_before == 3 and store.task_count == outcome.masks_after
    first = outcome.decisions[0]
    # Trained 250 batches on permuted:2, task 1 fits its own data clearly.
    assert first.decision == REUSE and first.mask == 1 and first.p >= first.threshold
    record = store.task(1)
    assert record.revision >= 1 and record.train["batches"] == 250 + 40
    assert store.header.mask_rule == "topk"
    assert np.array_equal(store.read_packed([0, 2]), old_masks[[0, 2]])
    assert store.verify() == []


def test_creation_options_that_contradict_the_store_are_refused(tmp_path, permuted_store):
    path = tmp_path / "copy.zarr"
    shutil.copytree(permuted_store, path)
    with pytest.raises(StoreMismatchError):
        allocate_stream(path, "permuted:1", QUICK, CreationOptions(mask_rule="sign"))
    assert MaskStore.open(path).task_count == 3


def test_bad_spec_writes_nothing(tmp_path):
    path = tmp_path / "s.zarr"
    with pytest.raises(DataSpecError):
        allocate_stream(path, "permuted:1,split:9", QUICK)
    assert not path.exists()


def test_networks_with_per_task_statistics_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="per-task statistics"):
        allocate_stream(tmp_path / "s.zarr", "split:0", QUICK, CreationOptions(arch="bn-2048-2048"))


def test_another_writer_appending_mid_run_moves_the_new_mask_after_its_task(tmp_path):
    """Another writer makes the store and appends a task before allocate's first commit: the
    run takes that task in as a known mask and appends its own mask after it; nothing is lost and
    the log names the masks by their final indices."""
    path = tmp_path / "s.zarr"
    creation = CreationOptions(outputs=100, mask_rule="sign")
    appended = []

    def other_writer(row: AuditRow) -> None:
        if not appended:  # right after the first decision, before anything is written
            appended.append(train_task(path, "permuted:5", creation, TrainConfig(batches=5)))

    outcome = allocate_stream(path, "permuted:1", QUICK, on_decision=other_writer)
    store = MaskStore.open(path)
    records = store.tasks()
    assert records[0].sha256 == appended[0].record.sha256 and records[0].data == "permuted:5"
    assert not outcome.created_store and outcome.allocated[0] == 1 and outcome.taken_in == (0,)
    assert store.task_count == 1 + len(outcome.allocated) == outcome.masks_after
    assert all(records[mask].data == "permuted:1" for mask in outcome.allocated)
    assert read_log(path) == list(outcome.decisions)  # the log names the final indices
    assert store.verify() == []


def test_another_writer_appending_while_a_known_mask_trains(tmp_path, permuted_store):
    """A replace (training a known mask further) after another writer appended: both land."""
    path = Path(shutil.copytree(permuted_store, tmp_path / "s.zarr"))
    before = MaskStore.open(path).read_packed()
    config = AllocateConfig(batches_per_segment=40, check_every=20, batch_size=64)
    fired = []

    def other_writer(row: AuditRow) -> None:
        if not fired:
            fired.append(train_task(path, "permuted:7", CreationOptions(), TrainConfig(batches=5)))

    outcome = allocate_stream(path, "permuted:2", config, on_decision=other_writer)
    store = MaskStore.open(path)
    assert outcome.decisions[0].decision == REUSE and outcome.decisions[0].mask == 1
    assert [r.data for r in store.tasks()][:4] == ["permuted:1", "permuted:2", "permuted:3",
                                                    "permuted:7"]  # fmt: skip
    assert store.task(1).revision >= 1 and store.task(1).train["batches"] == 250 + 40
    assert np.array_equal(store.read_packed([0, 2]), before[[0, 2]])
    assert store.task(3).sha256 == fired[0].record.sha256
    assert store.verify() == []


def test_another_writer_replacing_a_known_mask_is_refused(tmp_path, permuted_store):
    """A mask this run knows changed under it (another allocate trained it): one clear error."""
    path = Path(shutil.copytree(permuted_store, tmp_path / "s.zarr"))
    config = AllocateConfig(batches_per_segment=40, check_every=20, batch_size=64)
    fired = []

    def other_writer(row: AuditRow) -> None:
        if not fired:
            fired.append(allocate_stream(path, "permuted:1", config))

    with pytest.raises(StoreError, match="another writer changed masks this run"):
        allocate_stream(path, "permuted:2", config, on_decision=other_writer)
    assert MaskStore.open(path).verify() == []
