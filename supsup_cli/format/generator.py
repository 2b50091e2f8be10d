"""The fixed weights' generator `philox-signs-v1` (normative text in formats/supsup-store-v1.md):
the sign bits of each layer, from numpy's counter-based Philox, stable across machines.

Layer l, with n = out*in weights in row-major (out, in) order, takes ceil(n/64) raw 64-bit words
from Philox-4x64 seeded by SeedSequence([seed, l]). Bit j (least significant first) of word w
decides weight 64*w + j: 1 -> +c, 0 -> -c, with c = float32(sqrt(2 / fan_in)).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

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


def signed_constant(seed: int, layer_index: int, shape: tuple[int, ...]) -> np.ndarray:
    """One layer's fixed weights, float32 of `shape` (fan-in = product of all but the first
    axis): +-sqrt(2 / fan_in) by the layer's sign bits."""
    fan_in = math.prod(shape[1:])
    magnitude = np.float32(math.sqrt(2.0 / fan_in))
    bits = layer_sign_bits(seed, layer_index, math.prod(shape))
    return np.where(bits == 1, magnitude, -magnitude).astype(np.float32).reshape(shape)
