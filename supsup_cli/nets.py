"""Networks by name: fixed random weights from the seed, masks supplied at each call."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .weights import MAX_SEED, signed_kaiming_constant

INPUTS: Final = 784
MAX_OUTPUTS: Final = 100_000


@dataclass(frozen=True)
class NetConfig:
    """Everything that determines the fixed network: architecture, output count and seed."""

    arch: str
    outputs: int = 10
    seed: int = 0
    inputs: int = INPUTS

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {self.arch!r}; valid: {', '.join(sorted(ARCHITECTURES))}"
            )
        if not isinstance(self.outputs, int) or not 1 <= self.outputs <= MAX_OUTPUTS:
            raise ConfigError(
                f"outputs must be an integer in [1, {MAX_OUTPUTS}], got {self.outputs}"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        if self.inputs != INPUTS:
            raise ConfigError(f"inputs must be {INPUTS} (28x28 images), got {self.inputs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        return cls(**{k: data[k] for k in ("arch", "outputs", "seed", "inputs")})

    @property
    def mask_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the mask sites in network order (what one task's mask covers)."""
        return ARCHITECTURES[self.arch].mask_shapes(self)

    @property
    def mask_bits(self) -> int:
        """D: the number of mask bits of one task."""
        return sum(math.prod(s) for s in self.mask_shapes)


class MaskedLinear(nn.Module):
    """Linear layer with fixed weights and no bias; the (maybe fractional) mask comes per call."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * mask)


class MaskedMLP(nn.Module):
    """784 -> hidden... -> outputs, ReLU between layers, every weight masked."""

    hidden: tuple[int, ...] = ()

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            MaskedLinear(signed_kaiming_constant(config.seed, index, shape))
            for index, shape in enumerate(self.mask_shapes(config))
        )

    @classmethod
    def mask_shapes(cls, config: NetConfig) -> list[tuple[int, ...]]:
        widths = (config.inputs, *cls.hidden, config.outputs)
        return [(fan_out, fan_in) for fan_in, fan_out in zip(widths, widths[1:], strict=False)]

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        x = x.flatten(1)  # (n, 784)
        for index, (layer, mask) in enumerate(zip(self.layers, masks, strict=True)):
            x = layer(x, mask)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x  # (n, outputs)


ARCHITECTURES: dict[str, type[MaskedMLP]] = {}


def register(name: str) -> Callable[[type], type]:
    """Add an architecture to the name registry users pick from with `--arch`."""

    def add(cls: type) -> type:
        ARCHITECTURES[name] = cls
        return cls

    return add


@register("lenet-300-100")
class LeNet300100(MaskedMLP):
    hidden = (300, 100)


@register("fc-1024-1024")
class FC10241024(MaskedMLP):
    hidden = (1024, 1024)


def build_net(config: NetConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The fixed network of a config; weights are generated on the CPU, then moved."""
    return ARCHITECTURES[config.arch](config).to(device).eval()
