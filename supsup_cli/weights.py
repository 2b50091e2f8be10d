"""Fixed random weights, regenerated bit-exactly from the store's seed (never stored).

Generator `philox-signs-v1` (normative text in formats/supsup-store-v1.md):
layer l of the network, with n = out*in weights in row-major (out, in) order, takes
ceil(n/64) raw 64-bit words from numpy's Philox-4x64 seeded by SeedSequence([seed, l]).
Bit j (least significant first) of word w decides weight 64*w + j: 1 -> +c, 0 -> -c,
with c = float32(sqrt(2 / fan_in)) (signed Kaiming constant). Raw Philox output and
SeedSequence are stable across numpy versions and machines, unlike torch's RNG streams.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

import numpy as np
import torch

GENERATOR_NAME: Final = "philox-signs-v1"
MAX_SEED: Final = 2**63 - 1


def layer_sign_bits(seed: int, layer_index: int, count: int) -> np.ndarray:
    """The `count` sign bits (uint8 0/1) of one layer, in row-major weight order."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    words = np.random.Philox(np.random.SeedSequence([seed, layer_index])).random_raw(
        (count + 63) // 64
    )
    as_bytes = words.astype("<u8", copy=False).view(np.uint8)
    return np.unpackbits(as_bytes, bitorder="little")[:count]


def signed_kaiming_constant(seed: int, layer_index: int, shape: tuple[int, int]) -> torch.Tensor:
    """The fixed weight matrix (out, in) of one layer: ±sqrt(2 / fan_in), float32, on the CPU."""
    out_features, fan_in = shape
    magnitude = np.float32(math.sqrt(2.0 / fan_in))
    bits = layer_sign_bits(seed, layer_index, out_features * fan_in)
    values = np.where(bits == 1, magnitude, -magnitude).astype(np.float32)
    return torch.from_numpy(values.reshape(out_features, fan_in))


def weight_digest(weight: torch.Tensor) -> str:
    """sha256 of the little-endian float32 bytes of a weight tensor (for golden checks)."""
    data = weight.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes()
    return hashlib.sha256(data).hexdigest()
