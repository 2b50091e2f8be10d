"""The GPU's top-k path (model/radix_select.py), run on the CPU: every site's mask from one
radix selection over all sites equals torch.topk's site by site, ties included, and its
gradient is the straight-through one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from supsup_cli.format.rules import kept_count
from supsup_cli.model.radix_select import kth_largest_bits, sites_topk_masks
from supsup_cli.model.supermask import ScoreMasks, topk_masks_together


def reference_mask(scores: torch.Tensor, kept: int) -> torch.Tensor:
    flat = torch.zeros(scores.numel())
    flat[scores.abs().flatten().topk(kept).indices] = 1.0
    return flat.view(scores.shape)


def spread_scores(shapes: list[tuple[int, ...]], seed: int) -> list[torch.Tensor]:
    """Magnitudes over many binades (so that both radix passes matter), both signs, some zeros."""
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for shape in shapes:
        values = torch.randn(shape, generator=generator)
        values *= 10.0 ** torch.empty(shape).uniform_(-6, 3, generator=generator)
        if values.numel() >= 3:
            values.view(-1)[:3] = torch.tensor([0.0, -0.0, 0.0])
        scores.append(values)
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_sites_mask_is_its_topk(seed: int) -> None:
    shapes = [(20, 3, 3, 3), (40, 20, 3, 3), (1,), (7, 11), (100, 40)]
    scores = spread_scores(shapes, seed)
    kept = [
        kept_count(s.numel(), d) for s, d in zip(scores, (0.5, 0.1, 1.0, 1.0, 0.03), strict=True)
    ]
    masks = sites_topk_masks(scores, kept)
    for s, k, mask in zip(scores, kept, masks, strict=True):
        assert torch.equal(mask, reference_mask(s, k))


def test_the_threshold_is_the_kth_largest_bit_pattern() -> None:
    values = torch.rand(5000, generator=torch.Generator().manual_seed(3)) * 2.0**-20
    values[:100] *= 2.0**40  # two populations far apart: the high pass splits them
    site = torch.zeros(5000, dtype=torch.int64)
    for kept in (1, 100, 101, 2500, 5000):
        found = kth_largest_bits(values.view(torch.int32), site, torch.tensor([kept]))
        assert found.view(torch.float32).item() == values.sort(descending=True).values[kept - 1]


TIED_VALUES = [0.0, -0.0, -0.5, 0.25, 1.0, 3.0, -3.0, 1e-30, 7e8]


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.integers(1, 300),
        elements=st.sampled_from([0.0, -0.5, 0.25, 1.0, 3.0, -3.0, 1e-30, 7e8]),
    ),
    st.floats(0.01, 1.0),
)
def test_ties_keep_exactly_the_count_and_never_a_smaller_magnitude(values, density) -> None:
    scores = torch.from_numpy(values)
    kept = kept_count(scores.numel(), density)
    (mask,) = sites_topk_masks([scores], [kept])
    magnitudes = scores.abs()
    assert mask.sum().item() == kept
    if kept < scores.numel():
        assert magnitudes[mask == 1].min() >= magnitudes[mask == 0].max()


def test_the_masks_made_together_train_as_the_ones_made_site_by_site() -> None:
    """Same masks as ScoreMasks' CPU path, and gradient grad * sign(score) at every site."""
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (10, 128)]
    scores = spread_scores(shapes, 4)
    one_by_one = ScoreMasks(scores, "topk", 0.5)
    together = [s.clone().requires_grad_() for s in scores]
    kept = [kept_count(s.numel(), 0.5) for s in scores]
    masks = topk_masks_together(together, kept)
    upstream = [torch.randn(shape, generator=torch.Generator().manual_seed(5)) for shape in shapes]
    sum((m * g).sum() for m, g in zip(masks, upstream, strict=True)).backward()
    sum((m * g).sum() for m, g in zip(one_by_one(), upstream, strict=True)).backward()
    for mask, expected, leaf, reference, g in zip(
        masks, one_by_one(), together, one_by_one.scores, upstream, strict=True
    ):
        assert torch.equal(mask, expected)
        assert torch.equal(leaf.grad, reference.grad)
        assert torch.equal(leaf.grad, g * leaf.detach().sign())


def test_ties_are_kept_in_index_order_site_by_site() -> None:
    """Sites of tied values side by side: each keeps its count, its larger values, and then its
    first ties (the positions count from each site's own start)."""
    first = torch.tensor([2.0, 1.0, 1.0, -1.0, 0.5, 1.0])
    second = torch.tensor([1.0, -1.0, 1.0, 3.0])
    third = torch.tensor([0.0, -0.0, 0.0])
    masks = sites_topk_masks([first, second, third], [3, 2, 2])
    assert masks[0].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert masks[1].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert masks[2].tolist() == [1.0, 1.0, 0.0]
