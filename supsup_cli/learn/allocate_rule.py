"""The NNs decision rule, apart from any training: keep training a known mask, or allocate one.

Given the one-shot gradient g = ∂H/∂α over k' = max(k, 5) candidates (the k known masks first,
then untrained masks that pad them, as in the paper), p = max softmax(-g). A new mask is
allocated when p < (1 + ε)/k' (no mask is sure enough) or when an untrained candidate wins (it
fits better than every known mask); otherwise the winning known mask trains from this batch on:
the one being trained already (continue) or another (reuse). A new mask past the budget stops the
run instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch

from ..errors import ConfigError
from .choices import DEFAULT_EPSILON

MIN_CANDIDATES: Final = 5  # k' = max(k, 5): the paper's floor on the candidates of a decision
MAX_EPSILON: Final = 4.0

# What one check decided (the `decision` of an audit row).
ALLOCATE: Final = "allocate"  # a new mask, because no known mask fits
CONTINUE: Final = "continue"  # the mask being trained still fits best
REUSE: Final = "reuse"  # another known mask fits best: train it from now on
BUDGET: Final = "budget"  # a new mask was needed but the budget is spent: the run stops
DECISIONS: Final = (ALLOCATE, CONTINUE, REUSE, BUDGET)

# Why a mask was allocated (the `reason` of an allocate or budget row).
REASON_FIRST: Final = "no masks yet"
REASON_UNSURE: Final = "p < threshold"
REASON_FRESH: Final = "an untrained mask fits best"


@dataclass(frozen=True)
class Choice:
    """One decision: the winning candidate, its p = max softmax(-g), and the threshold."""

    p: float
    threshold: float
    candidate: int  # argmax of -g over all k' candidates (>= known: an untrained mask)
    allocate: bool
    reason: str = ""


# With no known mask there is nothing to compare: the first check allocates (p is undefined).
FIRST_CHOICE: Final = Choice(float("nan"), float("nan"), 0, True, REASON_FIRST)


def candidate_count(known: int) -> int:
    """k' = max(k, MIN_CANDIDATES): how many masks take part in a decision over k known ones."""
    return max(known, MIN_CANDIDATES)


def decide(gradient: torch.Tensor, known: int, epsilon: float = DEFAULT_EPSILON) -> Choice:
    """Allocate if p = max softmax(-g) < (1 + ε)/k' or an untrained candidate wins; else the
    winner. `gradient` is ∂H/∂α over k' candidates, the k known masks first."""
    if known < 1:
        raise ConfigError("a decision needs at least one known mask (the first batch allocates)")
    if not 0 <= epsilon <= MAX_EPSILON:
        raise ConfigError(f"epsilon must be in [0, {MAX_EPSILON}], got {epsilon}")
    wanted = candidate_count(known)
    g = torch.as_tensor(gradient).detach().double().cpu().flatten()  # (k',)
    if g.numel() != wanted:
        raise ConfigError(f"{g.numel()} gradients for {known} known masks; expected k' = {wanted}")
    if not torch.isfinite(g).all():
        raise ConfigError("the one-shot gradient is not finite")
    # Float64: equal gradients give exactly 1/k', so ε = 0 sits exactly on the threshold.
    probabilities = torch.softmax(-g, dim=0)  # (k',)
    p = float(probabilities.max())
    threshold = (1.0 + epsilon) / wanted
    candidate = int(probabilities.argmax())
    if p < threshold:
        return Choice(p, threshold, candidate, True, REASON_UNSURE)
    if candidate >= known:
        return Choice(p, threshold, candidate, True, REASON_FRESH)
    return Choice(p, threshold, candidate, False)


def action(choice: Choice, active: int | None, known: int, budget: int) -> str:
    """What a choice makes the run do (one of DECISIONS): `active` is the mask being trained
    (None before the first), `known` the masks there are, `budget` the most there may be."""
    if choice.allocate:
        return BUDGET if known >= budget else ALLOCATE
    return CONTINUE if choice.candidate == active else REUSE
