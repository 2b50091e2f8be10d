"""Supermasks: per-weight scores turned into binary masks with a straight-through gradient.

`density` is always the fraction of weights KEPT (never "sparsity" or "prune rate").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..format.rules import check_rule, kept_count
from .radix_select import radix_ready, sites_topk_masks


def numpy_ready(values: torch.Tensor) -> bool:
    """Whether a mask of `values` is made in numpy: float32 on the CPU, where numpy's
    comparisons and introselect are 3-8x faster than torch's on one thread."""
    return values.device.type == "cpu" and values.dtype == torch.float32


def numpy_topk_mask(magnitudes: np.ndarray, kept: int) -> np.ndarray | None:
    """1[magnitudes >= their `kept`-th largest value] (float32), or None when ties at that value
    would keep more than `kept`. np.partition (introselect) finds the value about 8x faster
    than torch.kthvalue or torch.topk, whose selection was ~10% of a resnet18-gem training step
    on the CPU."""
    flat = magnitudes.reshape(-1)
    position = flat.size - kept
    below = np.partition(flat, position)
    threshold = below[position]
    if position and below[:position].max() >= threshold:
        return None
    return (magnitudes >= threshold).astype(np.float32)


class _TopKStraightThrough(torch.autograd.Function):
    """Mask of the `kept` largest |scores|; backward passes the gradient straight through |.|,
    i.e. times sign(score): without it a negative score would be pushed the wrong way and
    training stays at chance."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, kept: int) -> torch.Tensor:
        mask = None
        if numpy_ready(scores):
            values = scores.detach().numpy()
            found = numpy_topk_mask(np.abs(values), kept)
            if found is not None:
                mask, signs = torch.from_numpy(found), torch.from_numpy(np.sign(values))
        if mask is None:
            flat = scores.detach().abs().flatten()
            mask = torch.zeros_like(flat)
            mask[flat.topk(kept, sorted=False).indices] = 1.0
            mask, signs = mask.view_as(scores), scores.detach().sign()
        ctx.save_for_backward(signs)
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (signs,) = ctx.saved_tensors
        return grad * signs, None


class _SignStraightThrough(torch.autograd.Function):
    """Mask 1[score >= 0]; backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        if numpy_ready(scores):
            return torch.from_numpy((scores.detach().numpy() >= 0).astype(np.float32))
        return (scores >= 0).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad


class _SitesTopKStraightThrough(torch.autograd.Function):
    """Every site's top-k mask in one selection (radix_select.py, for the GPU); backward as
    _TopKStraightThrough's, times sign(score) site by site."""

    @staticmethod
    def forward(ctx, kept: tuple[int, ...], *scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(*scores)
        return tuple(sites_topk_masks(scores, kept))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        signs = (s.detach().sign() for s in ctx.saved_tensors)
        return (None, *(grad * sign for grad, sign in zip(grads, signs, strict=True)))


def topk_masks_together(scores: Sequence[torch.Tensor], kept: Sequence[int]) -> list[torch.Tensor]:
    """Every site's top-k mask from one selection over all of them (float32 scores on one
    device; the GPU's path), with scores_to_mask's straight-through gradient."""
    return list(_SitesTopKStraightThrough.apply(tuple(kept), *scores))


def scores_to_mask(scores: torch.Tensor, rule: str, density: float | None) -> torch.Tensor:
    """Binary float mask of one site; gradients reach the scores straight through (and |.|)."""
    if rule == "sign":
        return _SignStraightThrough.apply(scores)
    return _TopKStraightThrough.apply(scores, kept_count(scores.numel(), density))


def kaiming_uniform_scores(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Initial scores: Kaiming uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = in*kh*kw for a convolution."""
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def split_flat(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Cut a flat (D,) vector into one tensor per mask site, in network order."""
    sizes = [math.prod(s) for s in shapes]
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]


def bits_to_masks(
    bits: np.ndarray, shapes: Sequence[tuple[int, ...]], device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Float 0/1 masks, one per site, from a flat (D,) array of mask bits."""
    flat = torch.from_numpy(np.ascontiguousarray(bits, dtype=np.float32)).to(device)
    return split_flat(flat, shapes)


class ScoreMasks(nn.Module):
    """The trainable part of one task: one score tensor per mask site, turned into masks."""

    def __init__(
        self,
        scores: Sequence[torch.Tensor],
        rule: str,
        density: float | None,
        site_densities: Sequence[float | None] | None = None,
    ) -> None:
        """`site_densities`: one top-k density per site (e.g. an Erdos-Renyi budget) instead of
        the same `density` for every site."""
        super().__init__()
        check_rule(rule, density)
        self.rule = rule
        self.density = density
        self.scores = nn.ParameterList(nn.Parameter(s.clone()) for s in scores)
        self.densities = [density] * len(scores) if site_densities is None else site_densities
        if len(self.densities) != len(scores):
            raise ValueError(f"{len(self.densities)} densities for {len(scores)} mask sites")
        for kept in self.densities:
            check_rule(rule, kept)

    def forward(self) -> list[torch.Tensor]:
        pairs = list(zip(self.scores, self.densities, strict=True))
        if self.rule == "topk" and not numpy_ready(self.scores[0]) and radix_ready(self.scores):
            kept = tuple(kept_count(s.numel(), density) for s, density in pairs)
            return topk_masks_together(list(self.scores), kept)
        return [scores_to_mask(s, self.rule, density) for s, density in pairs]

    @torch.no_grad()
    def mask_bits(self) -> np.ndarray:
        """The learned mask as a flat (D,) bool array, sites concatenated in network order."""
        return torch.cat([m.flatten() for m in self()]).cpu().numpy().astype(bool)

    @torch.no_grad()
    def flat_scores(self) -> torch.Tensor:
        """All raw scores as one (D,) float32 CPU vector (for the store's transfer sum)."""
        return torch.cat([s.detach().flatten() for s in self.scores]).float().cpu()
