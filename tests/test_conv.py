"""Convolutional supermask networks: masked convolutions equal dense ones with the masked weights,
the fixed weights follow the generator with fan-in in*kh*kw, per-task BatchNorm statistics are a
task's own and never change once committed, the one-shot superposition mixes every site by α,
the Erdos-Renyi budget, and input shapes in the header (older stores read as 1x28x28)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from supsup_cli.errors import ConfigError, StoreError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.convnets import Conv
from supsup_cli.format.generator import signed_constant
from supsup_cli.format.header import StoreHeader
from supsup_cli.format.rules import er_densities
from supsup_cli.learn.data import TaskData
from supsup_cli.learn.objectives import entropy
from supsup_cli.learn.taskid import alpha_gradient
from supsup_cli.learn.train import (
    CreationOptions,
    TrainConfig,
    initial_scores,
    train_mask,
    train_task,
)
from supsup_cli.model.convnets import masked_conv
from supsup_cli.model.nets import PerTaskStats, build_net
from supsup_cli.model.supermask import ScoreMasks
from supsup_cli.store import MaskStore


@pytest.mark.parametrize("stride", [1, 2])
def test_a_masked_convolution_is_a_dense_one_with_the_masked_weights(stride: int) -> None:
    generator = torch.Generator().manual_seed(stride)
    conv = Conv(6, 4, 3, stride)
    weight = torch.from_numpy(signed_constant(7, 0, conv.shape))
    mask = (torch.rand(conv.shape, generator=generator) < 0.3).float()
    dense = nn.Conv2d(4, 6, 3, stride=stride, padding=1, bias=False)
    with torch.no_grad():
        dense.weight.copy_(weight * mask)
    x = torch.randn(5, 4, 9, 9, generator=generator)
    assert torch.allclose(masked_conv(x, weight, mask, conv), dense(x), atol=1e-6)


def test_conv_weights_are_signed_constants_with_fan_in_in_kh_kw() -> None:
    net = build_net(NetConfig("conv4", seed=3))
    first = net.weight(1)  # (16, 16, 3, 3)
    assert first.shape == (16, 16, 3, 3)
    assert torch.all(first.abs() == np.float32(math.sqrt(2 / (16 * 9))))
    assert torch.equal(first, torch.from_numpy(signed_constant(3, 1, (16, 16, 3, 3))))


def test_the_whole_conv_net_equals_dense_torch_layers() -> None:
    """conv4 in eval mode, written out with torch's own modules and the masked weights."""
    config = NetConfig("conv4", outputs=4, seed=2)
    net = build_net(config)
    generator = torch.Generator().manual_seed(0)
    masks = [(torch.rand(s, generator=generator) < 0.5).float() for s in config.mask_shapes]
    stats = torch.rand(config.stats_size, generator=generator) + 0.5
    net.load_task_stats(stats)
    x = torch.randn(3, 1, 28, 28, generator=generator)
    y, offset = x, 0
    for site in range(4):
        weight = net.weight(site) * masks[site]
        y = nn.functional.conv2d(y, weight, padding=1)
        width = weight.shape[0]
        mean, var = stats[offset : offset + width], stats[offset + width : offset + 2 * width]
        offset += 2 * width
        y = torch.relu((y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5))
        if site % 2 == 1:
            y = nn.functional.max_pool2d(y, 2)
    y = torch.relu(y.flatten(1) @ (net.weight(4) * masks[4]).T) @ (net.weight(5) * masks[5]).T
    assert torch.allclose(net(x.flatten(1), masks), y, atol=1e-4)


def test_conv_nets_keep_per_task_statistics_and_batch_statistics_when_unknown() -> None:
    net = build_net(NetConfig("resnet18-gem", outputs=5))
    assert isinstance(net, PerTaskStats)
    masks = [torch.ones(s) for s in net.config.mask_shapes]
    x = torch.randn(4, 3 * 32 * 32)
    before = net.task_stats()
    with net.batch_statistics():
        net(x, masks)
    assert torch.equal(net.task_stats(), before), "batch statistics leave the task's untouched"
    net.train()
    net(x, masks)
    assert not torch.equal(net.task_stats(), before), "training updates the running statistics"


def test_a_committed_tasks_mask_and_statistics_never_change(tmp_path: Path) -> None:
    store_path = tmp_path / "conv.zarr"
    config = TrainConfig(lr=0.1, batch_size=32, batches=3, optimizer="sgd")
    options = CreationOptions(arch="conv4", density=0.3)
    train_task(store_path, "split:0", options, config)
    store = MaskStore.open(store_path)
    mask, stats = store.read_mask(0).copy(), store.read_task_stats(0).copy()
    assert stats.shape == (store.net.stats_size,) and np.all(np.isfinite(stats))
    assert np.any(stats[:16] != 0), "the first BatchNorm's running means moved from zero"
    train_task(store_path, "split:1", options, config)
    train_task(store_path, "split:2", CreationOptions(), config)
    store = MaskStore.open(store_path)
    assert store.task_count == 3
    assert store.read_mask(0).tobytes() == mask.tobytes()
    assert store.read_task_stats(0).tobytes() == stats.tobytes()
    assert store.read_task_stats(1).tobytes() != stats.tobytes(), "each task has its own"


def test_the_erdos_renyi_budget_gives_the_formulas_densities() -> None:
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (10, 512), (4, 2, 1, 1)]
    scale = 2.0
    densities = er_densities(shapes, scale, 0.5)
    for shape, density in zip(shapes, densities, strict=True):
        c_out, c_in = shape[0], shape[1]
        kh, kw = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
        assert density == min(0.5, scale * (c_out + c_in) / (c_out * c_in * kh * kw))
    assert densities[3] == 0.5 and densities[0] < 0.5  # the cap, and a layer below it
    scores = [torch.randn(s) for s in shapes]
    masks = ScoreMasks(scores, "topk", 0.5, site_densities=densities)()
    for mask, density in zip(masks, densities, strict=True):
        assert int(mask.sum()) == max(1, round(density * mask.numel()))


def test_the_header_records_the_input_shape_and_old_stores_read_as_28x28() -> None:
    conv = StoreHeader(NetConfig("resnet18-gem", outputs=100), "topk", 0.5, version=4, slots=())
    attrs = conv.to_attrs()
    assert attrs["network"]["input_shape"] == [3, 32, 32]
    assert attrs["network"]["inputs"] == 3072
    assert StoreHeader.from_attrs(attrs) == conv
    old = StoreHeader(NetConfig("lenet-300-100"), "topk", 0.5).to_attrs()
    assert "input_shape" not in old["network"] and old["network"]["inputs"] == 784
    assert StoreHeader.from_attrs(old).net.shape == (1, 28, 28)
    wrong = {**attrs, "network": {**attrs["network"], "inputs": 784}}
    with pytest.raises(StoreError, match="inputs must be 3072"):
        StoreHeader.from_attrs(wrong)
    mlp = {**attrs, "network": {**old["network"], "input_shape": [3, 32, 32], "inputs": 3072}}
    with pytest.raises(StoreError, match="takes 1x28x28"):
        StoreHeader.from_attrs(mlp)
    with pytest.raises(StoreError, match="must be 4"):  # an input shape is a version 4 field
        StoreHeader.from_attrs(StoreHeader(conv.net, "topk", 0.5).to_attrs())


@pytest.mark.parametrize("shape", [(2, 32, 32), (3, 8, 8), (3, 32, 2000), (3, 32)])
def test_bad_input_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="input shape"):
        NetConfig("resnet18-gem", input_shape=shape)  # type: ignore[arg-type]


def test_bytes_per_task_of_the_residual_nets() -> None:
    """ceil(D/8) mask bytes and 4 bytes per BatchNorm statistic: what `info` reports."""
    gem = NetConfig("resnet18-gem", outputs=100)
    assert gem.mask_bits == 1_091_740 - 10 * 160 + 100 * 160
    assert gem.stats_size == 3_000
    r50 = NetConfig("resnet50", outputs=1000)
    assert r50.stats_size == 53_120
    assert r50.mask_bits == 23_475_392 - 10 * 2048 + 1000 * 2048


def test_an_er_store_records_its_scale_and_trains_to_the_budget(tmp_path: Path) -> None:
    store_path = tmp_path / "er.zarr"
    config = TrainConfig(lr=0.1, batch_size=32, batches=2, optimizer="sgd")
    train_task(store_path, "split:0", CreationOptions(arch="conv4", er_scale=3.0), config)
    store = MaskStore.open(store_path)
    assert store.header.er_scale == 3.0 and store.header.to_attrs()["mask"]["er_scale"] == 3.0
    shapes = store.net.mask_shapes
    bits = store.read_mask(0)
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes])
    for site, density in enumerate(er_densities(shapes, 3.0, 0.5)):
        kept = int(bits[offsets[site] : offsets[site + 1]].sum())
        assert kept == max(1, round(density * math.prod(shapes[site])))
    with pytest.raises(ConfigError, match="topk rule only"):
        CreationOptions(arch="conv4", mask_rule="sign", er_scale=1.0).new_store_settings()


def test_transfer_starts_a_conv_task_from_the_mean_scores(tmp_path: Path) -> None:
    store_path = tmp_path / "transfer.zarr"
    config = TrainConfig(lr=0.1, batch_size=32, batches=2, optimizer="sgd", transfer=True)
    train_task(store_path, "split:0", CreationOptions(arch="conv4"), config)  # keeps score sums
    outcome = train_task(store_path, "split:1", CreationOptions(), config)
    assert outcome.record.train["transfer"] is True and outcome.record.index == 1
    assert outcome.record.accuracy is not None and outcome.record.accuracy > 0.6


def test_an_old_784_input_store_reads_trains_and_infers(tmp_path: Path) -> None:
    """A previous release's store (no input_shape: 1x28x28) takes a new task and infers PNGs."""
    from PIL import Image
    from typer.testing import CliRunner

    from supsup_cli.cli import app

    old = Path(__file__).parent / "fixtures" / "previous-release" / "lenet.zarr"
    path = tmp_path / "lenet.zarr"
    shutil.copytree(old, path)
    before = MaskStore.open(path)
    assert "input_shape" not in before.header.to_attrs()["network"]
    assert before.net.shape == (1, 28, 28) and before.net.inputs == 784
    runner = CliRunner()
    spec = "split:4" if "split:4" not in {r.data for r in before.tasks()} else "rotated:17"
    trained = runner.invoke(app, ["train-task", str(path), "--data", spec, "--batches", "3"])
    assert trained.exit_code == 0, trained.output
    after = MaskStore.open(path)
    assert after.task_count == before.task_count + 1
    assert after.read_mask(0).tobytes() == before.read_mask(0).tobytes()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "photo.png")
    inferred = runner.invoke(app, ["infer", str(path), str(tmp_path / "photo.png")])
    assert inferred.exit_code == 0, inferred.output
    assert '"task": ' in inferred.stdout


def test_epochs_set_the_steps_and_progress_reports_loss_and_accuracy() -> None:
    config = NetConfig("conv4", outputs=2)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 784, generator=generator), torch.arange(40) % 2
    data = TaskData("toy", (0, 1), x, y, x[:8], y[:8])
    train = TrainConfig(lr=1e-3, batch_size=16, epochs=3, optimizer="adam", schedule="cosine")
    assert train.steps(len(x)) == 3 * 2  # 40 // 16 whole batches per epoch
    reports: list[tuple[int, int, str]] = []
    scores = initial_scores(config.mask_shapes, 0, None)
    train_mask(
        build_net(config), data, "topk", 0.5, train, scores, progress=lambda *a: reports.append(a)
    )
    assert [r[:2] for r in reports] == [(step, 6) for step in range(1, 7)]
    assert reports[-1][2].startswith("epoch 3: loss ") and "train accuracy" in reports[-1][2]


def test_conv_one_shot_equals_autograd_through_alpha_at_every_site() -> None:
    """One-shot for conv4: each site's weights are W ⊙ Σ αᵢ Mᵢ (convolutions and linear layers
    alike), BatchNorm by the batch's own statistics; the packed scores equal ∂H/∂α written out
    with torch's own layers."""
    config = NetConfig("conv4", outputs=10, seed=4)
    net = build_net(config)
    generator = torch.Generator().manual_seed(1)
    bits = (torch.rand(3, config.mask_bits, generator=generator) < 0.5).numpy()
    x = torch.randn(12, 1, 28, 28, generator=generator)
    alphas = torch.full((3,), 1 / 3, requires_grad=True)
    sizes = [math.prod(s) for s in config.mask_shapes]
    rows = torch.from_numpy(bits).float().split(sizes, dim=1)
    mixed = [(alphas @ r).view(s) for r, s in zip(rows, config.mask_shapes, strict=True)]
    y = x
    for site in range(4):
        y = nn.functional.conv2d(y, net.weight(site) * mixed[site], padding=1)
        y = torch.relu(nn.functional.batch_norm(y, None, None, training=True, eps=1e-5))
        if site % 2 == 1:
            y = nn.functional.max_pool2d(y, 2)
    y = torch.relu(y.flatten(1) @ (net.weight(4) * mixed[4]).T) @ (net.weight(5) * mixed[5]).T
    (expected,) = torch.autograd.grad(entropy(y).mean(), alphas)
    got = alpha_gradient(net, np.packbits(bits, axis=1), x.flatten(1))
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * scale)
