"""The layer plans of the convolutional networks, as data: every convolution and linear layer in
network order (which is the order of the mask sites and of the generator's layer indices), and
every BatchNorm (whose running statistics belong to each task). model/nets.py builds the torch
modules from these plans, so the shapes a store records and the modules that run agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

BASIC: Final = "basic"
BOTTLENECK: Final = "bottleneck"
EXPANSION: Final = {BASIC: 1, BOTTLENECK: 4}


@dataclass(frozen=True)
class Conv:
    """One fixed convolution (no bias), shaped (out, in, k, k), followed by a non-affine BN."""

    out: int
    inp: int
    kernel: int
    stride: int = 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.out, self.inp, self.kernel, self.kernel)

    @property
    def padding(self) -> int:
        return self.kernel // 2


@dataclass(frozen=True)
class Block:
    """A residual block: its convolutions in order (each with its BN; ReLU between them), and
    the projection shortcut (1x1 conv + BN) when the shape changes."""

    convs: tuple[Conv, ...]
    shortcut: Conv | None


@dataclass(frozen=True)
class ConvPlan:
    """A whole network: a stem (convs, then an optional 3x3/2 max pool), residual blocks or
    plain convs with 2x2 max pools after those in `pool_after`, a pool to features, linear head."""

    stem: tuple[Conv, ...]
    stem_max_pool: bool
    blocks: tuple[Block, ...]
    pool_after: frozenset[int]  # plain nets: stem conv indices followed by a 2x2 max pool
    head_pool: int  # residual nets: average pool kernel (0: global average)
    linears: tuple[tuple[int, int], ...]  # (out, in) of each linear layer, ReLU between

    def convs(self) -> list[Conv]:
        """Every convolution in network order."""
        found = list(self.stem)
        for block in self.blocks:
            found.extend(block.convs)
            if block.shortcut is not None:
                found.append(block.shortcut)
        return found

    def site_shapes(self) -> list[tuple[int, ...]]:
        """The weight shape of each mask site, in network order."""
        return [c.shape for c in self.convs()] + list(self.linears)

    def bn_channels(self) -> list[int]:
        """Channels of each BatchNorm, in network order (one after every convolution)."""
        return [c.out for c in self.convs()]


def plain_plan(
    channels: tuple[int, ...], dense: tuple[int, ...], shape: tuple[int, int, int], outputs: int
) -> ConvPlan:
    """conv4-style: 3x3 convs, a 2x2 max pool after every second one, then linear layers."""
    convs, inp = [], shape[0]
    height, width = shape[1], shape[2]
    pools = frozenset(i for i in range(len(channels)) if i % 2 == 1)
    for index, out in enumerate(channels):
        convs.append(Conv(out, inp, 3))
        inp = out
        if index in pools:
            height, width = height // 2, width // 2
    widths = (inp * height * width, *dense, outputs)
    linears = tuple((b, a) for a, b in zip(widths, widths[1:], strict=False))
    return ConvPlan(tuple(convs), False, (), pools, 0, linears)


def resnet_plan(
    base: int,
    blocks: tuple[int, ...],
    block: str,
    stem: str,
    head_pool: int,
    shape: tuple[int, int, int],
    outputs: int,
) -> ConvPlan:
    """ResNet: BasicBlock or Bottleneck stages of width base * 2^s (stride 2 from the second
    stage); stem "cifar" (3x3 conv) or "imagenet" (7x7/2 conv, 3x3/2 max pool)."""
    expansion = EXPANSION[block]
    imagenet = stem == "imagenet"
    stem_convs = (Conv(base, shape[0], 7, 2) if imagenet else Conv(base, shape[0], 3),)
    height, width = shape[1], shape[2]
    if imagenet:
        height, width = (height + 1) // 2, (width + 1) // 2
        height, width = (height + 1) // 2, (width + 1) // 2
    inp, plan = base, []
    for stage, count in enumerate(blocks):
        mid = base * 2**stage
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            if stride == 2:
                height, width = (height + 1) // 2, (width + 1) // 2
            out = mid * expansion
            if block == BASIC:
                convs = (Conv(mid, inp, 3, stride), Conv(mid, mid, 3))
            else:
                convs = (Conv(mid, inp, 1), Conv(mid, mid, 3, stride), Conv(out, mid, 1))
            shortcut = Conv(out, inp, 1, stride) if stride != 1 or inp != out else None
            plan.append(Block(convs, shortcut))
            inp = out
    if head_pool:
        height, width = height // head_pool, width // head_pool
        features = inp * height * width
    else:
        features = inp
    return ConvPlan(
        stem_convs, imagenet, tuple(plan), frozenset(), head_pool, ((outputs, features),)
    )
