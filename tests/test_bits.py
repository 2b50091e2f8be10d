"""Bit packing: np.packbits order, zero padding, lossless round trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_cli.bits import pack_mask, packed_bytes, padding_is_zero, unpack_mask


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=2000), st.integers(min_value=0, max_value=2**32 - 1))
def test_pack_unpack_round_trip(mask_bits: int, seed: int) -> None:
    bits = np.random.default_rng(seed).random(mask_bits) < 0.5
    packed = pack_mask(bits)
    assert packed.dtype == np.uint8 and packed.shape == (packed_bytes(mask_bits),)
    assert np.array_equal(unpack_mask(packed, mask_bits), bits)
    assert padding_is_zero(packed, mask_bits)


def test_bit_order_is_most_significant_first() -> None:
    bits = np.zeros(10, dtype=bool)
    bits[0] = bits[9] = True
    assert pack_mask(bits).tolist() == [0b1000_0000, 0b0100_0000]


def test_nonzero_padding_is_detected() -> None:
    packed = pack_mask(np.ones(10, dtype=bool))
    packed[-1] |= 0b0000_0001
    assert not padding_is_zero(packed, 10)
    assert padding_is_zero(pack_mask(np.ones(16, dtype=bool)), 16)
