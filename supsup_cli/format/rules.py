"""Mask rules: how a task's scores become its mask. `density` is always the fraction of weights
KEPT (never "sparsity" or "prune rate")."""

from __future__ import annotations

from typing import Final

from ..errors import ConfigError

MASK_RULES: Final = ("topk", "sign")


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
