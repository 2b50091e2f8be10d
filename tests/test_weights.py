"""Fixed weights: bit-exact from the seed, in any process, matching the spec's golden values."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_cli.format.generator import layer_sign_bits
from supsup_cli.model.weights import signed_kaiming_constant, weight_digest

SPEC = Path(__file__).resolve().parents[1] / "formats" / "supsup-store-v1.md"


def spec_golden() -> dict[str, str]:
    """The golden values printed in the format spec (the spec is the truth)."""
    text = " ".join(SPEC.read_text().split())
    return {
        "first_word": re.search(r"`SeedSequence\(\[0, 0\]\)` is `(0x[0-9a-f]+)`", text).group(1),
        "first_bits": re.search(r"first 16 sign bits .*? are `([01]{16})`", text).group(1),
        "layer0": re.search(r"seed 0 is `([0-9a-f]{64})`", text).group(1),
        "layer1": re.search(r"seed 42, `([0-9a-f]{64})`", text).group(1),
    }


def test_golden_values_of_the_spec() -> None:
    golden = spec_golden()
    word = np.random.Philox(np.random.SeedSequence([0, 0])).random_raw(1)[0]
    assert int(word) == int(golden["first_word"], 16)
    assert "".join(map(str, layer_sign_bits(0, 0, 16))) == golden["first_bits"]
    assert weight_digest(signed_kaiming_constant(0, 0, (300, 784))) == golden["layer0"]
    assert weight_digest(signed_kaiming_constant(42, 1, (100, 300))) == golden["layer1"]


def test_identical_bytes_in_two_separate_processes() -> None:
    """A fresh process and this one (whose torch state earlier tests have used) agree."""
    code = (
        "from supsup_cli.model.weights import signed_kaiming_constant, weight_digest;"
        "print(weight_digest(signed_kaiming_constant(7, 2, (100, 300))))"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert fresh.stdout == weight_digest(signed_kaiming_constant(7, 2, (100, 300))) + "\n"


def test_values_are_the_signed_kaiming_constant() -> None:
    weight = signed_kaiming_constant(3, 0, (50, 200))
    assert weight.dtype.is_floating_point and weight.shape == (50, 200)
    magnitude = np.float32(np.sqrt(2.0 / 200))
    assert set(np.unique(weight.numpy()).tolist()) == {-magnitude, magnitude}
    assert 0.45 < (weight > 0).float().mean().item() < 0.55


def test_seed_and_layer_change_the_weights() -> None:
    base = weight_digest(signed_kaiming_constant(1, 0, (10, 20)))
    assert base != weight_digest(signed_kaiming_constant(2, 0, (10, 20)))
    assert base != weight_digest(signed_kaiming_constant(1, 1, (10, 20)))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 8), st.integers(1, 700))
def test_bits_are_a_prefix_stable_stream(seed: int, layer: int, count: int) -> None:
    """Asking for fewer weights gives a prefix of the longer stream: shapes never reshuffle bits."""
    bits = layer_sign_bits(seed, layer, count)
    assert bits.shape == (count,) and set(np.unique(bits)) <= {0, 1}
    assert np.array_equal(layer_sign_bits(seed, layer, count + 64)[:count], bits)


def test_seed_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        layer_sign_bits(-1, 0, 8)
