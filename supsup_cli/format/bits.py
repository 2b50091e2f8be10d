"""Bit packing of masks: np.packbits order (most significant bit first), zero padding."""

from __future__ import annotations

import numpy as np


def packed_bytes(mask_bits: int) -> int:
    """ceil(D / 8): bytes of one packed mask of D bits."""
    return (mask_bits + 7) // 8


def pack_mask(bits: np.ndarray) -> np.ndarray:
    """Flat 0/1 or bool array of D bits -> uint8 (ceil(D/8),); bit i is byte i//8, bit 7 - i%8."""
    return np.packbits(np.asarray(bits, dtype=bool).ravel(), bitorder="big")


def unpack_mask(packed: np.ndarray, mask_bits: int) -> np.ndarray:
    """uint8 (..., ceil(D/8)) -> bool (..., D), dropping the padding bits."""
    return np.unpackbits(packed, axis=-1, count=mask_bits, bitorder="big").astype(bool)


def padding_is_zero(packed: np.ndarray, mask_bits: int) -> bool:
    """Whether the unused low bits of the last byte are zero, as the format requires."""
    spare = packed_bytes(mask_bits) * 8 - mask_bits
    return spare == 0 or not np.any(packed[..., -1] & ((1 << spare) - 1))
