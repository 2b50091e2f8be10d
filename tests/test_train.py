"""Edge-popup training into a store: learns, appends, and evaluates back to the same numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from supsup_cli.errors import ConfigError, StoreMismatchError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.learn.data import load_task
from supsup_cli.learn.train import (
    CreationOptions,
    TrainConfig,
    evaluate_task,
    initial_scores,
    train_mask,
    train_task,
)
from supsup_cli.model.nets import build_net
from supsup_cli.store import MaskStore


def test_trained_store_reopens_with_its_accuracies(permuted_store: Path) -> None:
    store = MaskStore.open(permuted_store)
    assert store.task_count == 3
    for record in store.tasks():
        assert record.accuracy > 0.8, "250 batches of edge-popup learn a permuted task"
        again = evaluate_task(permuted_store, None, record.index)
        assert again.accuracy == pytest.approx(record.accuracy, abs=1e-6)
        assert again.data == record.data and again.examples == 1000


def test_mask_of_another_task_does_badly(permuted_store: Path) -> None:
    right = evaluate_task(permuted_store, "permuted:2", 1).accuracy
    wrong = evaluate_task(permuted_store, "permuted:2", 0).accuracy
    assert right > 0.8 and wrong < 0.5


def test_earlier_tasks_are_unchanged_by_later_ones(tmp_path: Path, permuted_store: Path) -> None:
    path = tmp_path / "grow.zarr"
    shutil.copytree(permuted_store, path)
    before = MaskStore.open(path)
    masks, records = before.read_packed(), before.tasks()
    train_task(path, "permuted:4", CreationOptions(), TrainConfig(batches=20))
    after = MaskStore.open(path)
    assert np.array_equal(after.read_packed([0, 1, 2]), masks)
    assert after.tasks()[:3] == records
    assert evaluate_task(path, None, 0).accuracy == pytest.approx(records[0].accuracy, abs=1e-6)


def test_loss_falls_and_accuracy_beats_chance() -> None:
    config = NetConfig("lenet-300-100", seed=1)
    losses: list[float] = []
    result = train_mask(
        build_net(config),
        load_task("permuted:5"),
        "topk",
        0.5,
        TrainConfig(batches=120),
        initial_scores(config.mask_shapes, 0, None),
        progress=lambda step, total, status: losses.append(float(status.removeprefix("loss "))),
    )
    assert len(losses) == 120 and np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.5
    assert result.accuracy > 0.6 and result.mask_bits.mean() == pytest.approx(0.5, abs=1e-3)


def test_transfer_starts_from_the_mean_scores(tmp_path: Path) -> None:
    net = NetConfig("lenet-300-100", 10, 0)
    store = MaskStore.create(tmp_path / "s.zarr", net, "topk", 0.5, keep_scores=True)
    scores = [np.random.default_rng(i).standard_normal(net.mask_bits) for i in (0, 1)]
    for index in range(2):
        store.append_task(
            scores[index] > 0,
            scores[index],
            data=f"permuted:{index}",
            classes=range(10),
            accuracy=None,
            train={},
            created="",
            seconds=None,
        )
    np.testing.assert_allclose(store.score_mean(), (scores[0] + scores[1]) / 2, atol=1e-6)
    mean = torch.from_numpy(store.score_mean())
    shapes = store.net.mask_shapes
    start = torch.cat([s.flatten() for s in initial_scores(shapes, 0, mean)])
    assert torch.equal(start, mean)
    assert not torch.equal(torch.cat([s.flatten() for s in initial_scores(shapes, 0, None)]), mean)


def test_sign_rule_store_and_options_checked_before_training(tmp_path: Path) -> None:
    path = tmp_path / "sign.zarr"
    outcome = train_task(
        path, "split:1", CreationOptions(mask_rule="sign"), TrainConfig(batches=30)
    )
    assert outcome.created_store and outcome.record.classes == (2, 3)
    assert MaskStore.open(path).header.density is None
    with pytest.raises(StoreMismatchError):
        train_task(path, "split:2", CreationOptions(mask_rule="topk"), TrainConfig(batches=30))
    with pytest.raises(ConfigError):
        train_task(
            tmp_path / "x.zarr",
            "split:1",
            CreationOptions(mask_rule="sign", density=0.3),
            TrainConfig(batches=30),
        )
    assert not (tmp_path / "x.zarr").exists()


def test_data_with_more_classes_than_outputs(tmp_path: Path) -> None:
    with pytest.raises(StoreMismatchError, match="outputs"):
        train_task(
            tmp_path / "o.zarr", "split:4", CreationOptions(outputs=5), TrainConfig(batches=5)
        )
    assert not (tmp_path / "o.zarr").exists()


def test_the_optimizer_not_given_is_the_references_for_the_network() -> None:
    """Adam 1e-3 for conv nets (SplitCIFAR-100), RMSprop 1e-4 for the MLPs; a choice the user
    made stays."""
    unset = TrainConfig()
    assert (unset.for_network(True).optimizer, unset.for_network(True).lr) == ("adam", 1e-3)
    assert (unset.for_network(False).optimizer, unset.for_network(False).lr) == ("rmsprop", 1e-4)
    chosen = TrainConfig(optimizer="sgd", lr=0.2).for_network(True)
    assert (chosen.optimizer, chosen.lr) == ("sgd", 0.2)
    half = TrainConfig(optimizer="sgd").for_network(False)
    assert (half.optimizer, half.lr) == ("sgd", 1e-4)
