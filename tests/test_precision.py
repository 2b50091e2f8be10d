"""Training precision: bf16 autocast (on the CPU here; on CUDA when a GPU is lent) learns the
mask that float32 learns, within noise, and conv nets run channels_last to the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import ConfigError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.learn.data import load_task
from supsup_cli.learn.train import (
    TrainConfig,
    TrainResult,
    initial_scores,
    train_mask,
)
from supsup_cli.model.nets import build_net

CONV4 = NetConfig("conv4")


def train_conv4(precision: str) -> tuple[TrainResult, set[torch.dtype]]:
    """A conv4 sign mask on split:1 (the hardest pair of digits), and the dtypes that reached
    the BatchNorms (what the convolutions produced) during training and the final test."""
    data = load_task("split:1", None, CONV4.shape)
    net = build_net(CONV4)
    seen: set[torch.dtype] = set()
    net.norms.register_forward_pre_hook(lambda _module, args: seen.add(args[1].dtype))
    config = TrainConfig(lr=0.2, optimizer="sgd", batches=20, precision=precision)
    scores = initial_scores(CONV4.mask_shapes, 0, None)
    return train_mask(net, data, "sign", None, config, scores), seen


def test_bf16_autocast_learns_the_fp32_mask_within_noise() -> None:
    full, full_dtypes = train_conv4("fp32")
    half, half_dtypes = train_conv4("bf16")
    assert full_dtypes == {torch.float32}
    assert half_dtypes == {torch.bfloat16, torch.float32}, "bf16 convolutions, fp32 test"
    assert full.accuracy > 0.9 and abs(half.accuracy - full.accuracy) <= 0.02
    agreement = (half.mask_bits == full.mask_bits).mean()
    assert 0.95 <= agreement < 1.0, f"{agreement:.4f} of the mask bits agree"
    assert half.flat_scores.dtype == torch.float32 and half.task_stats.dtype == torch.float32


def test_channels_last_gives_the_default_layouts_outputs() -> None:
    net = build_net(CONV4).eval()
    masks = [torch.ones(shape) for shape in CONV4.mask_shapes]
    x = torch.randn(6, 784, generator=torch.Generator().manual_seed(0))
    expected = net(x, masks)
    net.channels_last = True
    assert torch.allclose(net(x, masks), expected, atol=1e-5)


def test_an_unknown_precision_is_refused_in_one_line(tmp_path: Path) -> None:
    assert TrainConfig().precision == "fp32"
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        TrainConfig(precision="fp16")
    result = CliRunner().invoke(
        app, ["train-task", str(tmp_path / "x.zarr"), "--data", "split:0", "--precision", "fp16"]
    )
    assert result.exit_code == 2 and "unknown precision 'fp16'" in result.output
    assert not (tmp_path / "x.zarr").exists()
