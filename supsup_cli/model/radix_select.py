"""Exact top-k masks of many mask sites at once, for the GPU. A selection per site (torch.topk,
kthvalue) is a chain of kernels each, and on a ResNet-50 the 54 sites' selections cost about a
quarter of a training step (issue 16's measurement). Here two radix passes over all the sites'
|scores| together find every site's threshold: the |scores| as int32 bit patterns (for
non-negative float32, their order is the values' order), counted once on their top 16 bits
and once on the low 15 bits of the bucket that holds the threshold. The number of
kernels does not grow with the sites. On the CPU numpy's introselect is faster (supermask.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

LOW_BITS = 15  # a non-negative float32's 31 bits: 16 high bits, then 15 low bits
HIGH_BUCKETS = 1 << (31 - LOW_BITS)
LOW_BUCKETS = 1 << LOW_BITS


def radix_ready(scores: Sequence[torch.Tensor]) -> bool:
    """Whether the sites' masks can be made together here: float32 scores on one device."""
    return all(s.dtype == torch.float32 and s.device == scores[0].device for s in scores)


def _count(keys: torch.Tensor, bins: int) -> torch.Tensor:
    """torch.bincount without its host-side maximum (on CUDA an .item() that waits for the
    device): an index_add of ones into `bins` zeros."""
    ones = torch.ones((), dtype=torch.int64, device=keys.device).expand(len(keys))
    return torch.zeros(bins, dtype=torch.int64, device=keys.device).index_add_(0, keys, ones)


def _last_reaching(counts: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of bucket counts, the highest bucket b with at least `rank` values in buckets >= b,
    and how many values lie above b (rank - that is the threshold's rank inside b)."""
    at_or_above = counts.flip(1).cumsum(1).flip(1)
    bucket = (at_or_above >= rank[:, None]).sum(1) - 1
    inside = counts.gather(1, bucket[:, None]).squeeze(1)
    above = at_or_above.gather(1, bucket[:, None]).squeeze(1) - inside
    return bucket, above


def kth_largest_bits(bits: torch.Tensor, site: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Per site, the bit pattern of its `kept`-th largest value. `bits`: the non-negative float32
    values as int32, all sites concatenated; `site`: each value's site (int64); `kept` (int64,
    one per site, each in 1..the site's size)."""
    sites = len(kept)
    high = (bits >> LOW_BITS).long()
    counts = _count(site * HIGH_BUCKETS + high, sites * HIGH_BUCKETS)
    bucket, above = _last_reaching(counts.view(sites, HIGH_BUCKETS), kept)
    in_bucket = high == bucket[site]
    low = (bits & (LOW_BUCKETS - 1)).long()
    spare = sites * LOW_BUCKETS  # one bin past the sites' for the values outside their bucket
    keys = torch.where(in_bucket, site * LOW_BUCKETS + low, spare)
    counts = _count(keys, spare + 1)[:spare]
    low_bucket, _ = _last_reaching(counts.view(sites, LOW_BUCKETS), kept - above)
    return ((bucket << LOW_BITS) | low_bucket).to(torch.int32)


@functools.lru_cache(maxsize=8)
def _layout(
    sizes: tuple[int, ...], kept: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each value's site, the counts wanted and each site's first position, on the device: made
    once, since copying them there every step would wait for the device's queue."""
    lengths = torch.tensor(sizes, device=device)
    site = torch.repeat_interleave(torch.arange(len(sizes), device=device), lengths)
    return site, torch.tensor(kept, device=device), torch.cumsum(lengths, 0) - lengths


def sites_topk_masks(scores: Sequence[torch.Tensor], kept: Sequence[int]) -> list[torch.Tensor]:
    """Float masks of each site's `kept` largest |scores| (float32, any one device). Values tied
    at a site's threshold are kept in index order up to the count, so that every mask keeps
    exactly its `kept` without a decision on the host (which would wait for the device)."""
    sizes = tuple(s.numel() for s in scores)
    site, wanted, first = _layout(sizes, tuple(kept), scores[0].device)
    bits = torch.cat([s.detach().flatten() for s in scores]).abs_().view(torch.int32)
    thresholds = kth_largest_bits(bits, site, wanted)[site]
    above, tied = bits > thresholds, (bits == thresholds).long()
    room = wanted - torch.zeros_like(wanted).index_add_(0, site, above.long())
    ties_so_far = tied.cumsum(0)  # over all the sites: less the ties of the sites before
    ties_so_far -= (ties_so_far - tied)[first][site]
    keep = above | ((tied == 1) & (ties_so_far <= room[site]))
    flat = keep.to(torch.float32)
    return [part.view(s.shape) for part, s in zip(flat.split(sizes), scores, strict=True)]
