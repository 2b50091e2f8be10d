"""Convolutional supermask networks: fixed signed-constant convolutions and linear layers (the
plans of format/convnets.py), masks supplied at each call, and a non-affine BatchNorm after every
convolution whose running statistics belong to one task (the PerTaskStats protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..format.architectures import NetConfig
from ..format.convnets import Conv, ConvPlan
from .task_norms import TaskNorms, WithTaskNorms
from .weights import signed_kaiming_constant


def masked_conv(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, conv: Conv
) -> torch.Tensor:
    """A convolution by the fixed weight times the (maybe fractional) mask, no bias."""
    return F.conv2d(x, weight * mask, stride=conv.stride, padding=conv.padding)


class _ConvNet(WithTaskNorms):
    """What the convolutional nets share: the fixed weights of the plan's sites, the per-task
    BatchNorm statistics, and the input reshaped from (n, C*H*W) to (n, C, H, W)."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.plan: ConvPlan = config.architecture.plan(config.shape, config.outputs)
        self.convs = self.plan.convs()
        for index, shape in enumerate(self.plan.site_shapes()):
            self.register_buffer(
                f"weight_{index}", signed_kaiming_constant(config.seed, index, shape)
            )
        self.norms = TaskNorms(self.plan.bn_channels())
        self.channels_last = False  # NHWC activations (set for training on CUDA in bf16)

    def weight(self, index: int) -> torch.Tensor:
        return getattr(self, f"weight_{index}")

    def images(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """(n, C*H*W) or (n, C, H, W) -> (n, C, H, W), after checking the mask count."""
        if len(masks) != len(self.plan.site_shapes()):
            raise ConfigError(
                f"{len(masks)} masks given; {self.config.arch} has {len(self.plan.site_shapes())}"
            )
        images = x.reshape(len(x), *self.config.shape)
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def conv_bn(self, site: int, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mask site `site` (a convolution) then its BatchNorm (BN `site`: one per convolution)."""
        return self.norms(site, masked_conv(x, self.weight(site), masks[site], self.convs[site]))

    def head(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """The linear layers after the convolutions, ReLU between them."""
        x = x.flatten(1)
        first = len(self.convs)
        for offset in range(len(self.plan.linears)):
            site = first + offset
            if offset:
                x = F.relu(x)
            x = F.linear(x, self.weight(site) * masks[site])
        return x


class MaskedConvNet(_ConvNet):
    """conv4-style: conv-BN-ReLU layers, a 2x2 max pool after every second one, linear layers."""

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.images(x, masks)
        for site in range(len(self.convs)):
            x = F.relu(self.conv_bn(site, x, masks))
            if site in self.plan.pool_after:
                x = F.max_pool2d(x, 2)
        return self.head(x, masks)  # (n, outputs)


class MaskedResNet(_ConvNet):
    """ResNet with BasicBlocks or Bottlenecks, every convolution and the linear layer masked."""

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        x = F.relu(self.conv_bn(0, self.images(x, masks), masks))
        if self.plan.stem_max_pool:
            x = F.max_pool2d(x, 3, stride=2, padding=1)
        site = len(self.plan.stem)
        for block in self.plan.blocks:
            out = x
            for position in range(len(block.convs)):
                out = self.conv_bn(site, out, masks)
                site += 1
                if position < len(block.convs) - 1:
                    out = F.relu(out)
            if block.shortcut is not None:
                x = self.conv_bn(site, x, masks)
                site += 1
            x = F.relu(out + x)
        if self.plan.head_pool:
            x = F.avg_pool2d(x, self.plan.head_pool)
        else:
            x = F.adaptive_avg_pool2d(x, 1)
        return self.head(x, masks)  # (n, outputs)
