"""Networks by name: fixed random weights from the seed, masks supplied at each call. The shapes
of every registered network are data in format/architectures.py; this builds the modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..format.architectures import ARCHITECTURES, NetConfig
from .convnets import MaskedConvNet, MaskedResNet
from .task_norms import TaskNorms, WithTaskNorms
from .weights import signed_kaiming_constant


class MaskedLinear(nn.Module):
    """Linear layer with fixed weights and no bias; the (maybe fractional) mask comes per call."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * mask)


class MaskedMLP(nn.Module):
    """784 -> hidden... -> outputs, ReLU between layers, every weight masked."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        shapes = config.architecture.layer_shapes(config.inputs, config.outputs)
        self.layers = nn.ModuleList(
            MaskedLinear(signed_kaiming_constant(config.seed, index, shape))
            for index, shape in enumerate(shapes)
        )

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        x = x.flatten(1)  # (n, 784)
        for index, (layer, mask) in enumerate(zip(self.layers, masks, strict=True)):
            x = layer(x, mask)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x  # (n, outputs)


@runtime_checkable
class PerTaskStats(Protocol):
    """A net whose normalisation statistics belong to one task (trained, stored, loaded with it)."""

    def reset_task_stats(self) -> None: ...

    def task_stats(self) -> torch.Tensor: ...

    def load_task_stats(self, stats: torch.Tensor | np.ndarray) -> None: ...


class FixedLinear(nn.Module):
    """Linear layer with fixed weights, no bias and no mask."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class MaskedBNMLP(WithTaskNorms):
    """784 -> hidden... -> outputs, all weights fixed and unmasked; the masks select the channels of
    non-affine BatchNorms (one site per hidden layer), Swish after each. Masking channels rather
    than weights keeps d small enough for a d x d Hopfield energy. Running statistics are per task.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden = config.architecture.hidden
        shapes = config.architecture.layer_shapes(config.inputs, config.outputs)
        self.linears = nn.ModuleList(
            FixedLinear(signed_kaiming_constant(config.seed, index, shape))
            for index, shape in enumerate(shapes)
        )
        self.norms = TaskNorms(self.hidden)

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(masks) != len(self.hidden):
            raise ConfigError(
                f"{len(masks)} masks given; {self.config.arch} has {len(self.hidden)}"
            )
        x = x.flatten(1)  # (n, 784)
        for index, mask in enumerate(masks):
            x = self.norms(index, self.linears[index](x))  # (n, width)
            x = F.silu(x * mask)  # (n, width); mask (width,) selects channels
        return self.linears[-1](x)  # (n, outputs)


MODULES: Final[dict[str, type[nn.Module]]] = {
    "mlp": MaskedMLP,
    "bn-mlp": MaskedBNMLP,
    "conv": MaskedConvNet,
    "resnet": MaskedResNet,
}


def build_net(config: NetConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The fixed network of a config; weights are generated on the CPU, then moved."""
    return MODULES[ARCHITECTURES[config.arch].kind](config).to(device).eval()
