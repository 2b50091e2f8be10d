"""Fixed random weights as tensors, regenerated bit-exactly from the store's seed (never stored);
the generator itself is format/generator.py."""

from __future__ import annotations

import hashlib

import torch

from ..format.generator import signed_constant


def signed_kaiming_constant(seed: int, layer_index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed weights of one layer: ±sqrt(2 / fan_in), float32, on the CPU."""
    return torch.from_numpy(signed_constant(seed, layer_index, tuple(shape)))


def weight_digest(weight: torch.Tensor) -> str:
    """sha256 of the little-endian float32 bytes of a weight tensor (for golden checks)."""
    data = weight.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes()
    return hashlib.sha256(data).hexdigest()
