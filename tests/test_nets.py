"""Every registered architecture: fixed weights, no biases, masks sized as the network says."""

from __future__ import annotations

import math

import pytest
import torch

from supsup_cli.errors import ConfigError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.model.nets import ARCHITECTURES, build_net


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_builds_and_masks_cover_every_site(arch: str) -> None:
    shape = (3, 64, 64) if arch in ("resnet18", "resnet50") else None  # small images: fast
    config = NetConfig(arch, outputs=12, seed=5, input_shape=shape)
    net = build_net(config)
    assert config.mask_bits == sum(math.prod(s) for s in config.mask_shapes)
    assert not [n for n, _ in net.named_parameters()], "fixed network: nothing trainable"
    assert not [n for n, _ in net.named_buffers() if "bias" in n]
    masks = [torch.ones(s) for s in config.mask_shapes]
    out = net(torch.randn(4, config.inputs), masks)
    assert out.shape == (4, 12)
    zero = net(torch.randn(4, config.inputs), [torch.zeros(s) for s in config.mask_shapes])
    assert torch.count_nonzero(zero) == 0, "an all-zero mask removes every weight"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_same_config_gives_the_same_network(arch: str) -> None:
    config = NetConfig(arch, outputs=10, seed=11)
    a, b = build_net(config), build_net(config)
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        assert torch.equal(x, y), name


def test_lenet_mask_size_matches_the_issue() -> None:
    assert NetConfig("lenet-300-100", outputs=10).mask_bits == 266_200
    assert NetConfig("lenet-300-100", outputs=500).mask_bits == 315_200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "resnet-9000"},
        {"arch": "lenet-300-100", "outputs": 0},
        {"arch": "lenet-300-100", "seed": -1},
        {"arch": "lenet-300-100", "inputs": 100},
    ],
)
def test_bad_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        NetConfig(**kwargs)
