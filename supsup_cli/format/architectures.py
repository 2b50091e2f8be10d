"""The networks a store may name, as data: what each one's masks cover (their shapes) and how
many per-task statistics it keeps. The torch modules that run them live in model/nets.py and
are checked against this table by the tests."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final

from ..errors import ConfigError
from .convnets import ConvPlan, plain_plan, resnet_plan
from .generator import MAX_SEED

INPUTS: Final = 784
DIGITS_SHAPE: Final = (1, 28, 28)  # the input shape of a store that records none (R6)
MAX_OUTPUTS: Final = 100_000
MAX_SIDE: Final = 1024  # pixels of an input's height or width
MAX_INPUTS: Final = 3 * MAX_SIDE * MAX_SIDE
CONV_KINDS: Final = ("conv", "resnet")


@dataclass(frozen=True)
class Architecture:
    """One registered network: `kind` names how its masks apply ("mlp": every weight of every
    layer; "bn-mlp": the channels of a non-affine BatchNorm after each hidden layer; "conv" and
    "resnet": every weight of every convolution and linear layer, a per-task non-affine
    BatchNorm after each convolution). `hidden`: the MLPs' widths, the plain conv nets' dense
    widths; `channels`: the plain conv nets' convolutions, the residual nets' base width."""

    kind: str
    hidden: tuple[int, ...] = ()
    input_shape: tuple[int, int, int] = DIGITS_SHAPE  # (channels, height, width) by default
    channels: tuple[int, ...] = ()
    blocks: tuple[int, ...] = ()  # residual blocks per stage
    block: str = ""  # "basic" or "bottleneck"
    stem: str = ""  # "cifar" (3x3 conv) or "imagenet" (7x7/2 conv + max pool)
    head_pool: int = 0  # average pool kernel before the linear layer (0: global)

    def layer_shapes(self, inputs: int, outputs: int) -> list[tuple[int, int]]:
        """The (out, in) shapes of an MLP's fixed weight matrices, in layer order."""
        widths = (inputs, *self.hidden, outputs)
        return [(fan_out, fan_in) for fan_in, fan_out in zip(widths, widths[1:], strict=False)]

    def plan(self, shape: tuple[int, int, int], outputs: int) -> ConvPlan:
        """The layers of a convolutional network for inputs of `shape`."""
        if self.kind == "conv":
            return plain_plan(self.channels, self.hidden, shape, outputs)
        return resnet_plan(
            self.channels[0], self.blocks, self.block, self.stem, self.head_pool, shape, outputs
        )

    def mask_shapes(self, shape: tuple[int, int, int], outputs: int) -> list[tuple[int, ...]]:
        if self.kind == "bn-mlp":
            return [(width,) for width in self.hidden]
        if self.kind in CONV_KINDS:
            return self.plan(shape, outputs).site_shapes()
        return list(self.layer_shapes(math.prod(shape), outputs))

    @property
    def stats_size(self) -> int:
        """Floats of per-task statistics: BatchNorm running means and variances."""
        if self.kind in CONV_KINDS:  # the BN channels do not depend on the input or outputs
            return 2 * sum(self.plan(self.input_shape, 1).bn_channels())
        return 2 * sum(self.hidden) if self.kind == "bn-mlp" else 0

    def smallest_side(self) -> int:
        """The smallest height or width the network takes (its pools need at least this)."""
        if self.kind == "conv":
            return 2 ** (len(self.channels) // 2)
        if self.kind == "resnet":
            return 32
        return 28


ARCHITECTURES: Final[dict[str, Architecture]] = {
    "lenet-300-100": Architecture("mlp", (300, 100)),
    "fc-1024-1024": Architecture("mlp", (1024, 1024)),
    "bn-2048-2048": Architecture("bn-mlp", (2048, 2048)),
    "conv4": Architecture("conv", (128,), DIGITS_SHAPE, channels=(16, 16, 32, 32)),
    "resnet18-gem": Architecture(
        "resnet", (), (3, 32, 32), (20,), (2, 2, 2, 2), "basic", "cifar", head_pool=4
    ),
    "resnet18": Architecture("resnet", (), (3, 224, 224), (64,), (2, 2, 2, 2), "basic", "imagenet"),
    "resnet50": Architecture(
        "resnet", (), (3, 224, 224), (64,), (3, 4, 6, 3), "bottleneck", "imagenet"
    ),
}


@dataclass(frozen=True)
class NetConfig:
    """Everything that determines the fixed network: architecture, output count and seed."""

    arch: str
    outputs: int = 10
    seed: int = 0
    inputs: int | None = None  # C*H*W; None: from the input shape
    input_shape: tuple[int, int, int] | None = None  # None: the architecture's own

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
        shape = self.architecture.input_shape if self.input_shape is None else self.input_shape
        shape = check_input_shape(self.arch, tuple(shape))
        if self.inputs is not None and self.inputs != math.prod(shape):
            raise ConfigError(
                f"inputs must be {math.prod(shape)} ({'x'.join(map(str, shape))} images), "
                f"got {self.inputs}"
            )
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "inputs", math.prod(shape))

    def to_dict(self) -> dict[str, Any]:
        """arch, outputs, seed, inputs, and the input shape where it is not 1x28x28 (R6)."""
        data = {k: v for k, v in asdict(self).items() if k != "input_shape"}
        if self.input_shape != DIGITS_SHAPE:
            data["input_shape"] = list(self.shape)
        return data

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image."""
        assert self.input_shape is not None  # set by __post_init__
        return self.input_shape

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def mask_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the mask sites in network order (what one task's mask covers)."""
        return self.architecture.mask_shapes(self.shape, self.outputs)

    @property
    def mask_bits(self) -> int:
        """D: the number of mask bits of one task."""
        return sum(math.prod(s) for s in self.mask_shapes)

    @property
    def stats_size(self) -> int:
        """Floats of per-task statistics (BatchNorm running means/variances); 0 for most nets."""
        return self.architecture.stats_size


def check_input_shape(arch: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width): greyscale or RGB, each side within what the network takes;
    the MLPs take 1x28x28 only."""
    architecture = ARCHITECTURES[arch]
    smallest = architecture.smallest_side()
    if (
        len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        or shape[0] not in (1, 3)
        or not all(smallest <= side <= MAX_SIDE for side in shape[1:])
    ):
        raise ConfigError(
            f"input shape must be (channels 1 or 3, height, width) with sides in "
            f"[{smallest}, {MAX_SIDE}] for {arch}, got {shape}"
        )
    if architecture.kind not in CONV_KINDS and shape != DIGITS_SHAPE:
        raise ConfigError(f"{arch} takes 1x28x28 images (784 inputs), got {shape}")
    return (shape[0], shape[1], shape[2])
