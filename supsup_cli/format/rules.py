"""Mask rules: how a task's scores become its mask. `density` is always the fraction of weights
KEPT (never "sparsity" or "prune rate")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from ..errors import ConfigError

MASK_RULES: Final = ("topk", "sign")
MAX_ER_SCALE: Final = 1_000_000.0


def kept_count(numel: int, density: float) -> int:
    """How many weights a top-k mask keeps in one mask site: max(1, round(density * numel))."""
    return max(1, round(density * numel))


def check_rule(rule: str, density: float | None) -> None:
    """Validate a mask rule and its density (top-k needs a density in (0, 1])."""
    if rule not in MASK_RULES:
        raise ConfigError(f"unknown mask rule {rule!r}; valid rules: {', '.join(MASK_RULES)}")
    if rule == "topk" and (density is None or not 0.0 < density <= 1.0):
        raise ConfigError(
            f"density must be in (0, 1] (the fraction of weights kept), got {density}"
        )


def check_er_scale(rule: str, scale: float | None) -> None:
    """An Erdos-Renyi budget needs the topk rule and a scale in (0, MAX_ER_SCALE]."""
    if scale is None:
        return
    if rule != "topk":
        raise ConfigError("an Erdos-Renyi budget (--er-scale) applies to the topk rule only")
    if not 0.0 < scale <= MAX_ER_SCALE:
        raise ConfigError(f"--er-scale must be in (0, {MAX_ER_SCALE:g}], got {scale}")


def er_densities(shapes: Sequence[tuple[int, ...]], scale: float, cap: float) -> list[float]:
    """Erdos-Renyi density of each mask site: min(cap, s * (c_out + c_in) / (c_out * c_in *
    kh * kw)), a linear (out, in) layer counting as a 1x1 convolution; `cap` is the store's
    density (0.5 in the reference)."""
    return [min(cap, scale * (s[0] + s[1]) / math.prod(s)) for s in shapes]


def site_densities(
    shapes: Sequence[tuple[int, ...]], density: float | None, er_scale: float | None
) -> list[float | None]:
    """The top-k density of each mask site: the store's density, or its Erdos-Renyi budget."""
    if er_scale is None or density is None:
        return [density] * len(shapes)
    return list(er_densities(shapes, er_scale, density))
