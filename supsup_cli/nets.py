"""Networks by name: fixed random weights from the seed, masks supplied at each call."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol, runtime_checkable

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

    @property
    def stats_size(self) -> int:
        """Floats of per-task statistics (BatchNorm running means/variances); 0 for most nets."""
        size = getattr(ARCHITECTURES[self.arch], "stats_size", None)
        return 0 if size is None else size(self)


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


ARCHITECTURES: dict[str, type[nn.Module]] = {}


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


@runtime_checkable
class PerTaskStats(Protocol):
    """A net whose normalisation statistics belong to one task (trained, stored, loaded with it)."""

    def reset_task_stats(self) -> None: ...

    def task_stats(self) -> torch.Tensor: ...

    def load_task_stats(self, stats: torch.Tensor) -> None: ...


class FixedLinear(nn.Module):
    """Linear layer with fixed weights, no bias and no mask."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class MaskedBNMLP(nn.Module):
    """784 -> hidden... -> outputs, all weights fixed and unmasked; the masks select the channels of
    non-affine BatchNorms (one site per hidden layer), Swish after each. Masking channels rather
    than weights keeps d small enough for a d x d Hopfield energy. Running statistics are per task.
    """

    hidden: tuple[int, ...] = ()
    momentum: float = 0.1
    eps: float = 1e-5

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.inputs, *self.hidden, config.outputs)
        self.linears = nn.ModuleList(
            FixedLinear(signed_kaiming_constant(config.seed, index, (fan_out, fan_in)))
            for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False))
        )
        for index, width in enumerate(self.hidden):
            self.register_buffer(f"running_mean_{index}", torch.zeros(width))
            self.register_buffer(f"running_var_{index}", torch.ones(width))
        self._batch_statistics = False

    @classmethod
    def mask_shapes(cls, config: NetConfig) -> list[tuple[int, ...]]:
        return [(width,) for width in cls.hidden]

    @classmethod
    def stats_size(cls, config: NetConfig) -> int:  # noqa: ARG003
        return 2 * sum(cls.hidden)

    def _running(self) -> list[torch.Tensor]:
        """Running means then variances of each layer, in layer order (the stored layout)."""
        return [
            getattr(self, f"running_{kind}_{index}")
            for index in range(len(self.hidden))
            for kind in ("mean", "var")
        ]

    def reset_task_stats(self) -> None:
        for index in range(len(self.hidden)):
            getattr(self, f"running_mean_{index}").zero_()
            getattr(self, f"running_var_{index}").fill_(1.0)

    def task_stats(self) -> torch.Tensor:
        """(stats_size,) float32 CPU: per layer, the running means then the running variances."""
        return torch.cat([buffer.detach().float().cpu() for buffer in self._running()])

    def load_task_stats(self, stats: torch.Tensor) -> None:
        flat = stats.reshape(-1)
        if flat.numel() != self.stats_size(self.config):
            raise ConfigError(
                f"{flat.numel()} statistics given; {self.config.arch} keeps "
                f"{self.stats_size(self.config)} per task"
            )
        buffers = self._running()
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(part)

    @contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Normalise by each batch's own statistics (task unknown); running statistics untouched."""
        previous, self._batch_statistics = self._batch_statistics, True
        try:
            yield
        finally:
            self._batch_statistics = previous

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(masks) != len(self.hidden):
            raise ConfigError(
                f"{len(masks)} masks given; {self.config.arch} has {len(self.hidden)}"
            )
        x = x.flatten(1)  # (n, 784)
        for index, mask in enumerate(masks):
            x = self.linears[index](x)  # (n, width)
            if self._batch_statistics:
                x = F.batch_norm(x, None, None, training=True, eps=self.eps)
            else:
                x = F.batch_norm(
                    x,
                    getattr(self, f"running_mean_{index}"),
                    getattr(self, f"running_var_{index}"),
                    training=self.training,
                    momentum=self.momentum,
                    eps=self.eps,
                )
            x = F.silu(x * mask)  # (n, width); mask (width,) selects channels
        return self.linears[-1](x)  # (n, outputs)


@register("bn-2048-2048")
class BN20482048(MaskedBNMLP):
    hidden = (2048, 2048)


def build_net(config: NetConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The fixed network of a config; weights are generated on the CPU, then moved."""
    return ARCHITECTURES[config.arch](config).to(device).eval()
