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


def quarter_steps(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Scores in {-1.25, -1, ..., 1.25}: many ties and many exact zeros (both signs of 0)."""
    values = torch.randint(-5, 6, shape, generator=torch.Generator().manual_seed(seed)) / 4
    return torch.where(values == 0, torch.tensor(-0.0), values) if seed % 2 else values


def reference_topk(scores: torch.Tensor, kept: int) -> torch.Tensor:
    flat = torch.zeros(scores.numel())
    flat[scores.detach().abs().flatten().topk(kept).indices] = 1.0
    return flat.view(scores.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_masks_and_gradients_equal_the_plain_formulas(seed: int) -> None:
    """Random scores with ties and zeros, the threshold falling between two levels (where the
    top-k set is unique): masks equal torch.topk's, gradients grad * w * sign(score) exactly."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(20, 3, 3, 3), (40, 20, 3, 3), (10, 160)]
    scores = [quarter_steps(shape, seed + 10 * i) for i, shape in enumerate(shapes)]
    level = 0.75
    densities = [(s.abs() >= level).sum().item() / s.numel() for s in scores]
    masks = ScoreMasks(scores, "topk", 0.5, site_densities=densities)
    weights = [torch.randn(shape, generator=generator) for shape in shapes]
    upstream = [torch.randn(shape, generator=generator) for shape in shapes]
    for _ in range(2):  # a second step from the same module
        found = masks()
        sum(
            ((w * m) * g).sum() for w, m, g in zip(weights, found, upstream, strict=True)
        ).backward()
        for site, s in enumerate(masks.scores):
            kept = kept_count(s.numel(), densities[site])
            assert torch.equal(found[site], reference_topk(s, kept))
            assert torch.equal(found[site], (s.detach().abs() >= level).float())
            expected = (upstream[site] * weights[site]) * s.detach().sign()
            assert torch.equal(s.grad, expected)
            s.grad = None


def test_topk_numpy_and_torch_paths_agree_on_random_scores() -> None:
    """float64 scores take torch's path (topk, sign), float32 on the CPU numpy's."""
    scores = torch.randn(64, 9, generator=torch.Generator().manual_seed(5))
    scores[0, :4] = 0.0
    upstream = torch.randn(64, 9, generator=torch.Generator().manual_seed(6))
    results = []
    for dtype in (torch.float32, torch.float64):
        leaf = scores.to(dtype, copy=True).requires_grad_()
        mask = scores_to_mask(leaf, "topk", 0.3)
        (mask * upstream.to(dtype)).sum().backward()
        results.append((mask.float(), leaf.grad.float()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[0][1], upstream * scores.sign())


def test_topk_ties_at_the_threshold_keep_the_count_on_random_scores() -> None:
    scores = quarter_steps((30, 30), 4)
    for density in (0.1, 0.33, 0.5, 0.9):
        kept = kept_count(scores.numel(), density)
        mask = scores_to_mask(scores, "topk", density).bool()
        threshold = scores.abs().flatten().topk(kept).values.min()
        assert mask.sum().item() == kept
        assert mask[scores.abs() > threshold].all(), "every larger magnitude is kept"
        assert not mask[scores.abs() < threshold].any(), "no smaller magnitude is kept"


@pytest.mark.parametrize("shapes", [[(40, 20, 3, 3)], [(40, 20, 3, 3), (50,), (50,)]])
def test_a_later_call_leaves_the_earlier_masks_and_gradients_alone(
    shapes: list[tuple[int, ...]],
) -> None:
    """A returned mask is the caller's: masks made before the scores change stay as they were,
    and two graphs of one step backpropagate in either order to the sum of their gradients."""
    generator = torch.Generator().manual_seed(7)
    scores = [torch.randn(shape, generator=generator) for shape in shapes]
    for rule, density in (("topk", 0.2), ("sign", None)):
        masks = ScoreMasks(scores, rule, density)
        first = masks()
        kept = [m.clone() for m in first]
        with torch.no_grad():
            for s in masks.scores:
                s.copy_(torch.randn(s.shape, generator=generator))
        changed = masks()
        for a, b, c in zip(first, kept, changed, strict=True):
            assert torch.equal(a, b)
            assert not torch.equal(a, c)
        masks = ScoreMasks(scores, rule, density)
        one, two = masks(), masks()
        upstream = [torch.randn(m.shape, generator=generator) for m in one]
        sum((m * g).sum() for m, g in zip(two, upstream, strict=True)).backward()
        sum((m * g).sum() for m, g in zip(one, upstream, strict=True)).backward()
        for s, g in zip(masks.scores, upstream, strict=True):
            single = g * s.detach().sign() if rule == "topk" else g
            assert torch.equal(s.grad, single + single)


@pytest.mark.parametrize("seed", [0, 1])
def test_sign_masks_equal_the_plain_rule_with_zeros(seed: int) -> None:
    scores = quarter_steps((16, 5, 3, 3), seed).requires_grad_()
    mask = scores_to_mask(scores, "sign", None)
    assert torch.equal(mask, (scores.detach() >= 0).float())
    upstream = torch.randn(scores.shape, generator=torch.Generator().manual_seed(seed))
    (mask * upstream).sum().backward()
    assert torch.equal(scores.grad, upstream)
