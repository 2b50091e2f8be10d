"""The networks a store may name, as data: what each one's masks cover (their shapes) and how
many per-task statistics it keeps. The torch modules that run them live in model/nets.py and
are checked against this table by the tests."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final

from ..errors import ConfigError
from .generator import MAX_SEED

INPUTS: Final = 784
MAX_OUTPUTS: Final = 100_000


@dataclass(frozen=True)
class Architecture:
    """One registered network: `kind` names how its masks apply ("mlp": every weight of every
    layer; "bn-mlp": the channels of a non-affine BatchNorm after each hidden layer)."""

    kind: str
    hidden: tuple[int, ...]

    def layer_shapes(self, inputs: int, outputs: int) -> list[tuple[int, int]]:
        """The (out, in) shapes of the fixed weight matrices, in layer order."""
        widths = (inputs, *self.hidden, outputs)
        return [(fan_out, fan_in) for fan_in, fan_out in zip(widths, widths[1:], strict=False)]

    def mask_shapes(self, inputs: int, outputs: int) -> list[tuple[int, ...]]:
        if self.kind == "bn-mlp":
            return [(width,) for width in self.hidden]
        return list(self.layer_shapes(inputs, outputs))

    @property
    def stats_size(self) -> int:
        """Floats of per-task statistics: BatchNorm running means and variances."""
        return 2 * sum(self.hidden) if self.kind == "bn-mlp" else 0


ARCHITECTURES: Final[dict[str, Architecture]] = {
    "lenet-300-100": Architecture("mlp", (300, 100)),
    "fc-1024-1024": Architecture("mlp", (1024, 1024)),
    "bn-2048-2048": Architecture("bn-mlp", (2048, 2048)),
}


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
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def mask_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the mask sites in network order (what one task's mask covers)."""
        return self.architecture.mask_shapes(self.inputs, self.outputs)

    @property
    def mask_bits(self) -> int:
        """D: the number of mask bits of one task."""
        return sum(math.prod(s) for s in self.mask_shapes)

    @property
    def stats_size(self) -> int:
        """Floats of per-task statistics (BatchNorm running means/variances); 0 for most nets."""
        return self.architecture.stats_size
