"""Supermask rules: top-k keeps the density asked, sign keeps score >= 0, straight gradients."""

from __future__ import annotations

import pytest
import torch

from supsup_cli.errors import ConfigError
from supsup_cli.format.rules import check_rule, kept_count
from supsup_cli.model.supermask import ScoreMasks, scores_to_mask


def test_topk_keeps_the_largest_magnitudes() -> None:
    scores = torch.tensor([[0.1, -0.9, 0.5, -0.2]])
    mask = scores_to_mask(scores, "topk", 0.5)
    assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("density", [0.05, 0.1, 0.5, 1.0])
def test_topk_density_is_the_fraction_kept(density: float) -> None:
    scores = torch.randn(300, 784)
    mask = scores_to_mask(scores, "topk", density)
    assert mask.sum().item() == kept_count(scores.numel(), density)


def test_topk_gradient_is_straight_through_and_through_abs() -> None:
    scores = torch.tensor([0.3, -0.4, 0.05, -0.01], requires_grad=True)
    mask = scores_to_mask(scores, "topk", 0.5)
    (mask * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    # identity through the mask, times sign(score) from |.|
    assert scores.grad.tolist() == [1.0, -2.0, 3.0, -4.0]


def test_sign_rule_and_its_gradient() -> None:
    scores = torch.tensor([0.3, -0.4, 0.0], requires_grad=True)
    mask = scores_to_mask(scores, "sign", None)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    (mask * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert scores.grad.tolist() == [1.0, 2.0, 3.0]


def test_score_masks_flatten_in_network_order() -> None:
    masks = ScoreMasks([torch.tensor([[1.0, -1.0]]), torch.tensor([-2.0, 3.0, -0.5])], "sign", None)
    assert masks.mask_bits().tolist() == [True, False, False, True, False]
    assert masks.flat_scores().tolist() == [1.0, -1.0, -2.0, 3.0, -0.5]


@pytest.mark.parametrize(
    "rule,density", [("topk", 0.0), ("topk", 1.5), ("topk", None), ("prune", 0.5)]
)
def test_bad_rules_are_refused(rule: str, density: float | None) -> None:
    with pytest.raises(ConfigError):
        check_rule(rule, density)


def test_topk_with_ties_at_the_threshold_keeps_exactly_the_count() -> None:
    scores = torch.tensor([0.5, -0.5, 0.5, 0.1, -0.5, 0.2])  # three tie for the top two
    mask = scores_to_mask(scores, "topk", 2 / 6)
    assert mask.sum().item() == 2
    assert mask[[3, 5]].sum().item() == 0, "only tied magnitudes may be kept"


def test_topk_mask_is_the_largest_magnitudes_of_random_scores() -> None:
    scores = torch.randn(20, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    kept = kept_count(scores.numel(), 0.3)
    expected = torch.zeros(scores.numel())
    expected[scores.abs().flatten().topk(kept).indices] = 1.0
    assert torch.equal(scores_to_mask(scores, "topk", 0.3).flatten(), expected)
