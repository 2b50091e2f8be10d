"""The NNs decision rule on constructed gradients: no network, no training, no store.

Given ∂H/∂α over k' = max(k, 5) candidates (k known masks first), the rule allocates when
p = max softmax(-g) < (1 + ε)/k' or an untrained candidate wins, and otherwise keeps the winner;
`action` turns that choice into what the run does (continue, reuse, allocate, or stop at the
budget)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_cli.errors import ConfigError
from supsup_cli.learn.allocate_rule import (
    ALLOCATE,
    BUDGET,
    CONTINUE,
    FIRST_CHOICE,
    REASON_FIRST,
    REASON_FRESH,
    REASON_UNSURE,
    REUSE,
    Choice,
    action,
    candidate_count,
    decide,
)

EPS = 0.125
KEEP, UNSURE, FRESH = "", REASON_UNSURE, REASON_FRESH  # the reasons a choice gives


def gradient_with_p(p: float, k: int, winner: int = 0) -> torch.Tensor:
    """∂H/∂α over k candidates whose softmax(-g) has max exactly p at `winner`, the rest equal."""
    rest = (1.0 - p) / (k - 1)
    g = torch.full((k,), -math.log(rest), dtype=torch.float64)
    g[winner] = -math.log(p)
    return g


# -- the decision on constructed gradients --------------------------------------------------------


# gradient ∂H/∂α over k', k known, ε -> allocate, candidate, reason
DECIDE_CASES = [
    pytest.param([-1.0, -0.2, -0.2, -0.2, -0.2], 1, EPS, False, 0, KEEP, id="a fit is kept"),
    pytest.param([-0.1, -0.02, -0.02, -0.02, -0.02], 1, EPS, True, 0, UNSURE, id="scale/10"),
    pytest.param([-1.0, -0.2, -0.2, -0.2, -0.2], 1, 1.0, True, 0, UNSURE, id="large epsilon"),
    pytest.param([-0.2, -0.9, -0.25, -0.21, -0.22, -0.2], 6, EPS, False, 1, KEEP, id="k=6"),
    pytest.param([0.0, -1.0, 0.0, 0.0, 0.0], 4, EPS, False, 1, KEEP, id="beats padding"),
    pytest.param([-0.1, -0.1, -0.1, -2.0, -0.1], 2, EPS, True, 3, FRESH, id="fresh wins"),
    pytest.param([0.0, 0.0, 0.0, -0.05, 0.0], 2, EPS, True, 3, UNSURE, id="unsure first"),
    pytest.param([0.37] * 9, 9, EPS, True, 0, UNSURE, id="all equal"),
    pytest.param([0.0] * 5, 3, 0.0, False, 0, KEEP, id="p == threshold"),
    pytest.param([[-1.0, -0.2, -0.2, -0.2, -0.2]], 1, EPS, False, 0, KEEP, id="(1, k') row"),
]


@pytest.mark.parametrize(
    ("gradient", "known", "epsilon", "allocate", "candidate", "reason"), DECIDE_CASES
)
def test_decide_table(gradient, known, epsilon, allocate, candidate, reason):
    choice = decide(torch.tensor(gradient), known, epsilon)  # float32, as alpha_gradient gives
    assert (choice.allocate, choice.candidate, choice.reason) == (allocate, candidate, reason)
    g = np.asarray(gradient, dtype=np.float32).astype(np.float64).ravel()
    weights = np.exp(-(g - g.min()))  # softmax(-g), computed apart from the code under test
    assert choice.p == pytest.approx(weights.max() / weights.sum(), rel=1e-12)
    assert choice.threshold == pytest.approx((1 + epsilon) / len(g), rel=1e-12)


# a choice, the mask being trained, k known, the budget -> what the run does
ACTION_CASES = [
    pytest.param(FIRST_CHOICE, None, 0, 5, ALLOCATE, id="first check"),
    pytest.param(FIRST_CHOICE, None, 0, 1, ALLOCATE, id="first mask is the budget"),
    pytest.param(Choice(0.2, 0.225, 1, True, UNSURE), 1, 3, 5, ALLOCATE, id="unsure"),
    pytest.param(Choice(0.5, 0.225, 3, True, FRESH), 0, 2, 5, ALLOCATE, id="fresh wins"),
    pytest.param(Choice(0.2, 0.225, 0, True, UNSURE), 0, 5, 5, BUDGET, id="at the budget"),
    pytest.param(Choice(0.5, 0.225, 4, True, FRESH), 0, 7, 5, BUDGET, id="past the budget"),
    pytest.param(Choice(0.6, 0.225, 2, False), 2, 3, 5, CONTINUE, id="still fits"),
    pytest.param(Choice(0.6, 0.225, 2, False), 2, 9, 5, CONTINUE, id="budget spent, fits"),
    pytest.param(Choice(0.6, 0.225, 0, False), 2, 3, 5, REUSE, id="another fits"),
    pytest.param(Choice(0.6, 0.225, 1, False), None, 3, 5, REUSE, id="none trained yet"),
]


@pytest.mark.parametrize(("choice", "active", "known", "budget", "expected"), ACTION_CASES)
def test_action_table(choice, active, known, budget, expected):
    assert action(choice, active, known, budget) == expected


def test_the_first_choice_allocates_with_no_p():
    assert FIRST_CHOICE.allocate and FIRST_CHOICE.reason == REASON_FIRST
    assert math.isnan(FIRST_CHOICE.p) and math.isnan(FIRST_CHOICE.threshold)


def test_candidates_are_at_least_five():
    assert [candidate_count(k) for k in (1, 4, 5, 6, 250)] == [5, 5, 5, 6, 250]


@pytest.mark.parametrize("k", [1, 2, 5, 9, 40])
def test_equal_gradients_allocate(k):
    kp = candidate_count(k)
    choice = decide(torch.full((kp,), 0.37), k, EPS)
    assert choice.allocate and choice.reason == REASON_UNSURE
    assert choice.p == pytest.approx(1 / kp)
    assert choice.threshold == pytest.approx((1 + EPS) / kp)


@pytest.mark.parametrize("k", [5, 8, 20])
def test_threshold_edge(k):
    threshold = (1 + EPS) / k
    below = decide(gradient_with_p(threshold * (1 - 1e-9), k, winner=2), k, EPS)
    above = decide(gradient_with_p(threshold * (1 + 1e-9), k, winner=2), k, EPS)
    assert below.allocate and below.reason == REASON_UNSURE
    assert not above.allocate and above.candidate == 2
    assert below.p < below.threshold <= above.p


@given(
    k=st.integers(1, 30),
    values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=30, max_size=30),
    epsilon=st.floats(0, 1),
)
@settings(max_examples=200, deadline=None)
def test_decision_properties(k, values, epsilon):
    kp = candidate_count(k)
    g = torch.tensor(values[:kp], dtype=torch.float64)
    choice = decide(g, k, epsilon)
    probabilities = torch.softmax(-g, 0)
    assert choice.p == pytest.approx(float(probabilities.max()))
    assert choice.threshold == pytest.approx((1 + epsilon) / kp)
    assert choice.allocate == (choice.p < choice.threshold or choice.candidate >= k)
    assert 1 / kp - 1e-12 <= choice.p <= 1
    # Shifting every gradient by a constant changes nothing (softmax is shift-invariant).
    shifted = decide(g + 3.0, k, epsilon)
    assert shifted.allocate == choice.allocate or abs(choice.p - choice.threshold) < 1e-9


@pytest.mark.parametrize(
    ("gradient", "known", "message"),
    [
        (torch.zeros(4), 1, "expected k' = 5"),
        (torch.zeros(6), 5, "expected k' = 5"),
        (torch.tensor([0.0, 1.0, float("nan"), 0.0, 0.0]), 2, "not finite"),
        (torch.zeros(5), 0, "at least one known mask"),
    ],
)
def test_decide_rejects_bad_input(gradient, known, message):
    with pytest.raises(ConfigError, match=message):
        decide(gradient, known, EPS)


def test_decide_rejects_bad_epsilon():
    with pytest.raises(ConfigError, match="epsilon"):
        decide(torch.zeros(5), 1, -0.1)
