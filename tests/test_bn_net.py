"""bn-2048-2048: masks on BatchNorm channels, per-task running statistics trained, stored, used."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import ConfigError, StoreError, StoreMismatchError
from supsup_cli.format.architectures import ARCHITECTURES, Architecture, NetConfig
from supsup_cli.learn.data import load_task
from supsup_cli.learn.train import (
    CreationOptions,
    TrainConfig,
    evaluate,
    evaluate_task,
    initial_scores,
    train_mask,
    train_task,
)
from supsup_cli.model.nets import PerTaskStats, build_net
from supsup_cli.model.supermask import bits_to_masks
from supsup_cli.model.weights import signed_kaiming_constant
from supsup_cli.store import MaskStore

runner = CliRunner()
TINY = "bn-test-16-16"


TinyBN = Architecture("bn-mlp", (16, 16))


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> str:
    """A small BN-masked net (registered for one test) so training takes a moment."""
    monkeypatch.setitem(ARCHITECTURES, TINY, TinyBN)
    return TINY


def random_stats(widths: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for width in widths:
        parts += [
            torch.randn(width, generator=generator),
            torch.rand(width, generator=generator) + 0.5,
        ]
    return torch.cat(parts)


def test_sizes_of_bn_2048_2048() -> None:
    config = NetConfig("bn-2048-2048")
    assert config.mask_shapes == [(2048,), (2048,)]
    assert config.mask_bits == 4096 and config.stats_size == 8192
    assert NetConfig("lenet-300-100").stats_size == 0


def test_forward_matches_the_direct_formula() -> None:
    config = NetConfig("bn-2048-2048", outputs=10, seed=3)
    net = build_net(config)
    stats = random_stats((2048, 2048), 1)
    net.load_task_stats(stats)
    assert torch.equal(net.task_stats(), stats)
    bits = np.random.Generator(np.random.PCG64(2)).integers(0, 2, 4096).astype(bool)
    masks = bits_to_masks(bits, config.mask_shapes)
    x = load_task("split:0").test_x[:5]
    h = x
    mean0, var0, mean1, var1 = stats.split(2048)
    for layer, (mean, var, mask) in enumerate([(mean0, var0, masks[0]), (mean1, var1, masks[1])]):
        w = signed_kaiming_constant(3, layer, (2048, 784 if layer == 0 else 2048))
        h = h @ w.T
        h = (h - mean) / torch.sqrt(var + 1e-5) * mask
        h = h * torch.sigmoid(h)  # Swish
    expected = h @ signed_kaiming_constant(3, 2, (10, 2048)).T
    torch.testing.assert_close(net(x, masks), expected, rtol=1e-4, atol=1e-4)


def test_batch_statistics_ignore_and_keep_the_running_ones(tiny: str) -> None:
    net = build_net(NetConfig(tiny, seed=1))
    masks = [torch.ones(16), (torch.arange(16) % 2).float()]
    x = torch.randn(12, 784)
    stats = random_stats((16, 16), 4)
    net.load_task_stats(stats)
    h = x
    for layer, mask in enumerate(masks):
        h = F.linear(h, net.linears[layer].weight)
        h = F.silu((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5) * mask)
    expected = F.linear(h, net.linears[2].weight)
    with net.batch_statistics():
        torch.testing.assert_close(net(x, masks), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(net.task_stats(), stats), "the running statistics are untouched"
    assert not torch.allclose(net(x, masks), expected), "outside the context they count"
    assert isinstance(net, PerTaskStats)


def test_wrong_statistics_and_mask_counts_are_refused(tiny: str) -> None:
    net = build_net(NetConfig(tiny))
    with pytest.raises(ConfigError, match="statistics"):
        net.load_task_stats(torch.zeros(5))
    with pytest.raises(ConfigError, match="masks"):
        net(torch.zeros(2, 784), [torch.ones(16)])


def test_training_learns_statistics_and_leaves_eval_mode(tiny: str) -> None:
    config = NetConfig(tiny, seed=2)
    net = build_net(config)
    data = load_task("split:1")
    scores = initial_scores(config.mask_shapes, 0, None)
    result = train_mask(
        net, data, "sign", None, TrainConfig(lr=0.1, batches=20, optimizer="sgd"), scores
    )
    assert not net.training
    assert result.task_stats is not None and result.task_stats.shape == (config.stats_size,)
    means = result.task_stats[:16]
    assert torch.count_nonzero(means) == 16, "running means moved away from their reset value"
    fresh = build_net(config)
    fresh.load_task_stats(result.task_stats)
    masks = bits_to_masks(result.mask_bits, config.mask_shapes)
    assert evaluate(fresh, masks, data.test_x, data.test_y, data.classes) == result.accuracy
    assert result.accuracy > 0.6, "20 SGD steps on two digits beat chance"


def test_mlp_training_keeps_no_statistics() -> None:
    config = NetConfig("lenet-300-100")
    net = build_net(config)
    scores = initial_scores(config.mask_shapes, 0, None)
    result = train_mask(net, load_task("split:0"), "topk", 0.5, TrainConfig(batches=2), scores)
    assert result.task_stats is None and not net.training


def test_store_keeps_statistics_per_task(tiny: str, tmp_path: Path) -> None:
    path = tmp_path / "bn.zarr"
    creation = CreationOptions(arch=tiny, mask_rule="sign")
    config = TrainConfig(lr=0.1, batches=10, optimizer="sgd")
    first = train_task(path, "split:0", creation, config)
    second = train_task(path, "split:2", creation, config)
    store = MaskStore.open(path)
    assert np.array_equal(store.read_task_stats(0), first.result.task_stats.numpy())
    assert np.array_equal(store.read_task_stats(1), second.result.task_stats.numpy())
    assert store.verify() == []
    assert evaluate_task(path, None, 1).accuracy == second.record.accuracy
    with pytest.raises(StoreMismatchError, match="statistics"):
        store.append_task(
            np.zeros(32, bool),
            torch.zeros(32),
            data="split:3",
            classes=(6, 7),
            accuracy=None,
            train={},
            created="",
            seconds=None,
        )


def test_non_finite_statistics_are_caught(tiny: str, tmp_path: Path) -> None:
    path = tmp_path / "bn.zarr"
    train_task(
        path, "split:0", CreationOptions(arch=tiny, mask_rule="sign"), TrainConfig(batches=2)
    )
    store = MaskStore.open(path, writable=True)
    store.arrays["task_stats"][0] = np.full(64, math.nan, dtype=np.float32)
    assert any("task_stats" in p for p in MaskStore.open(path).verify())
    with pytest.raises(StoreError, match="non-finite"):
        MaskStore.open(path).read_task_stats(0)


def test_optimizer_choice(tiny: str, tmp_path: Path) -> None:
    assert TrainConfig(optimizer="sgd").optimizer == "sgd"
    with pytest.raises(ConfigError, match="rmsprop, sgd, adam"):
        TrainConfig(optimizer="lion")
    path = tmp_path / "cli.zarr"
    args = ["train-task", str(path), "--data", "split:0", "--arch", tiny, "--mask-rule", "sign"]
    bad = runner.invoke(app, [*args, "--optimizer", "lion"])
    assert bad.exit_code == 2 and "rmsprop, sgd, adam" in bad.stderr
    good = runner.invoke(
        app, [*args, "--optimizer", "sgd", "--lr", "0.1", "--batches", "3", "--json"]
    )
    assert good.exit_code == 0, good.output
    assert MaskStore.open(path).task(0).train["optimizer"] == "sgd"
