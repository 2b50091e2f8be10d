"""Bit packing: np.packbits order, zero padding, lossless round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_cli.format.bits import pack_mask, packed_bytes, padding_is_zero, unpack_mask
from supsup_cli.kernels import c_kernel as bitkernel
from supsup_cli.kernels.products import packed_matmul, packed_rmatvec
from supsup_cli.kernels.torch_products import (
    fused_gpu_kernel,
    packed_matmul_torch,
    packed_rmatvec_torch,
    unpack_torch,
)


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


# -- packed products --------------------------------------------------------------------------


def _float_masks(rows: int, mask_bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    bits = np.random.default_rng(seed).random((rows, mask_bits)) < 0.5
    return np.stack([pack_mask(row) for row in bits]), bits.astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=1, max_value=3000),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_packed_matmul_equals_float_product(
    rows: int, mask_bits: int, columns: int, seed: int
) -> None:
    packed, floats = _float_masks(rows, mask_bits, seed)
    rng = np.random.default_rng(seed + 1)
    matrix = rng.standard_normal((mask_bits, columns) if columns else mask_bits).astype(np.float32)
    expected = floats.astype(np.float64) @ matrix.astype(np.float64)
    got = packed_matmul(packed, matrix, mask_bits)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    got_torch = packed_matmul_torch(torch.from_numpy(packed), torch.from_numpy(matrix), mask_bits)
    np.testing.assert_allclose(got_torch.numpy(), expected, rtol=1e-4, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=1, max_value=3000),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_packed_rmatvec_equals_weighted_sum(rows: int, mask_bits: int, seed: int) -> None:
    packed, floats = _float_masks(rows, mask_bits, seed)
    weights = np.random.default_rng(seed + 1).standard_normal(rows).astype(np.float32)
    expected = weights.astype(np.float64) @ floats.astype(np.float64)
    np.testing.assert_allclose(packed_rmatvec(packed, weights, mask_bits), expected, atol=1e-4)
    got_torch = packed_rmatvec_torch(torch.from_numpy(packed), torch.from_numpy(weights), mask_bits)
    np.testing.assert_allclose(got_torch.numpy(), expected, atol=1e-4)


def test_products_span_several_blocks(monkeypatch) -> None:
    # Tiny blocks force many row and column blocks, with a ragged last byte (D % 8 = 5).
    monkeypatch.setattr("supsup_cli.kernels.products.PRODUCT_BLOCK_BITS", 64)
    packed, floats = _float_masks(13, 205, seed=7)
    vector = np.arange(205, dtype=np.float32) - 100
    np.testing.assert_allclose(packed_matmul(packed, vector, 205), floats @ vector, atol=1e-3)
    subset = np.zeros(13, dtype=np.float32)
    subset[[0, 4, 12]] = 1
    np.testing.assert_array_equal(packed_rmatvec(packed, subset, 205), floats[[0, 4, 12]].sum(0))


def test_unpack_torch_matches_numpy() -> None:
    packed, floats = _float_masks(3, 21, seed=3)
    assert torch.equal(unpack_torch(torch.from_numpy(packed), 21), torch.from_numpy(floats))


def test_products_reject_mismatched_shapes() -> None:
    packed, _ = _float_masks(2, 16, seed=1)
    with pytest.raises(ValueError, match="rows"):
        packed_matmul(packed, np.zeros(15, dtype=np.float32), 16)
    with pytest.raises(ValueError, match="uint8"):
        packed_matmul(packed, np.zeros(24, dtype=np.float32), 24)
    with pytest.raises(ValueError, match="weights"):
        packed_rmatvec(packed, np.ones(3, dtype=np.float32), 16)


# -- the optional compiled kernel: every instruction-set variant equals numpy; fallbacks work --

# Without -march the build targets the baseline ISA (the portable C loop); AVX2 if the CPU has it.
KERNEL_VARIANTS = {"native": bitkernel.DEFAULT_FLAGS, "portable": ("-O2",)}
if " avx2" in bitkernel._cpu_signature():
    KERNEL_VARIANTS["avx2"] = ("-O3", "-mavx2")


@pytest.mark.parametrize("variant", sorted(KERNEL_VARIANTS))
def test_kernel_variants_equal_numpy(variant: str, monkeypatch) -> None:
    library = bitkernel.build(KERNEL_VARIANTS[variant])
    assert library is not None, "gcc is needed to build the kernel (the CI image has it)"
    monkeypatch.setenv(bitkernel.KERNEL_ENV, "0")  # packed_matmul below: the numpy path
    cases = [(1, 5, 1), (3, 77, 2), (17, 1030, 3), (40, 8 * 1031, 4), (19, 8 * 2051 + 3, 2)]
    for rows, mask_bits, threads in cases:
        packed, floats = _float_masks(rows, mask_bits, seed=rows)
        vector = np.random.default_rng(mask_bits).standard_normal(mask_bits).astype(np.float32)
        got = bitkernel.matvec(library, packed, vector, threads)
        np.testing.assert_allclose(got, packed_matmul(packed, vector, mask_bits), atol=1e-3)
        weights = np.random.default_rng(threads).standard_normal(rows).astype(np.float32)
        weights[0] = 0.0  # skipped rows must still be right
        got = bitkernel.rmatvec(library, packed, weights, mask_bits, threads)
        np.testing.assert_allclose(got, weights @ floats, atol=1e-4)


@pytest.mark.parametrize("variant", sorted(KERNEL_VARIANTS))
def test_kernel_table_product_equals_float64(variant: str) -> None:
    """matmat (many columns: per-image gradients) for every width of its column blocks (16 to
    64, padded), byte counts that are not whole tiles or chunks, k = 0 and 1, and split across
    threads."""
    library = bitkernel.build(KERNEL_VARIANTS[variant])
    assert library is not None, "gcc is needed to build the kernel (the CI image has it)"
    empty = bitkernel.matmat(library, np.zeros((0, 7), np.uint8), np.ones((50, 9), np.float32))
    assert empty.shape == (0, 9)
    cases = [(1, 8, 5, 1), (37, 157, 17, 2), (5, 8 * 33 + 3, 40, 3)]
    cases += [(11, 1001, 70, 2), (3, 300, 129, 1), (7, 8 * 2100 + 5, 20, 2)]  # 3 chunks
    for rows, mask_bits, columns, threads in cases:
        packed, floats = _float_masks(rows, mask_bits, seed=columns)
        matrix = np.random.default_rng(rows).standard_normal((mask_bits, columns))
        got = bitkernel.matmat(library, packed, matrix.astype(np.float32), threads)
        assert got.shape == (rows, columns) and got.dtype == np.float32
        np.testing.assert_allclose(got, floats.astype(np.float64) @ matrix, rtol=1e-5, atol=1e-4)


def test_products_use_the_kernel_unless_disabled(monkeypatch) -> None:
    packed, floats = _float_masks(6, 300, seed=5)
    matrix = np.random.default_rng(5).standard_normal((300, 3)).astype(np.float32)
    with_kernel = packed_matmul(packed, matrix, 300)  # columns <= KERNEL_MAX_COLUMNS: kernel
    monkeypatch.setenv(bitkernel.KERNEL_ENV, "0")
    assert bitkernel.kernel() is None
    np.testing.assert_allclose(with_kernel, packed_matmul(packed, matrix, 300), atol=1e-4)
    np.testing.assert_allclose(with_kernel, floats @ matrix, atol=1e-4)


def test_kernel_build_failures_fall_back(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(bitkernel.CACHE_ENV, str(tmp_path / "cache"))
    assert bitkernel.build(("-O3", "-fno-such-option-for-supsup")) is None  # compile error
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
    assert bitkernel.build(("-O1",)) is None  # no compiler
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-built left behind


FUSED_GPU_CHECK = """
import json, numpy as np, torch
from supsup_cli.kernels import triton_kernel as triton_bitkernel
rng = np.random.default_rng(7)
errors = []
for rows, mask_bits, columns in [(37, 157, 0), (1, 8, 0), (20, 1000, 3), (0, 50, 0), (3, 1, 2),
                                 (17, 2051, 1), (4, 40, 0)]:
    bits = rng.integers(0, 2, (rows, mask_bits)).astype(bool)
    packed = np.packbits(bits, axis=1)
    matrix = rng.standard_normal((mask_bits, columns) if columns else mask_bits).astype(np.float32)
    got = triton_bitkernel.matmul(torch.from_numpy(packed), torch.from_numpy(matrix), mask_bits)
    want = bits.astype(np.float64) @ matrix.astype(np.float64)
    same_shape = tuple(got.shape) == want.shape and got.dtype == torch.float32
    errors.append(float(np.abs(got.numpy() - want).max(initial=0)) if same_shape else None)
print(json.dumps(errors))
"""


def test_fused_gpu_kernel_equals_float_product() -> None:
    """The Triton kernel of the CUDA path, run by Triton's interpreter on the CPU (CI has no
    GPU): the float product for D not a multiple of 8, k = 0 and 1, vectors and matrices."""
    pytest.importorskip("triton")  # ships with PyTorch's CUDA wheels; without it torch's path runs
    done = subprocess.run(
        [sys.executable, "-c", FUSED_GPU_CHECK],
        capture_output=True,
        text=True,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(errors) == 7 and all(e is not None and e < 1e-3 for e in errors), errors


def test_fused_gpu_kernel_is_off_with_the_kernel_switch(monkeypatch) -> None:
    fused_gpu_kernel.cache_clear()
    monkeypatch.setenv(bitkernel.KERNEL_ENV, "0")
    try:
        assert fused_gpu_kernel() is None
    finally:
        fused_gpu_kernel.cache_clear()


def test_a_fused_kernel_that_fails_leaves_the_unpack_path(monkeypatch) -> None:
    """On a GPU Triton cannot build for, the first product warns once and every product is
    still right, through the unpack path; the kernel is picked by the number of columns, and a
    failing tensor-core kernel leaves the vector kernel in use. (CPU tensors stand in for CUDA.)"""
    calls = []

    class Broken:
        MAX_COLUMNS = 8

        @staticmethod
        def matmul(*args: object) -> None:
            calls.append(("matmul", args[1].shape))
            raise RuntimeError("no kernel image is available for this device")

        @staticmethod
        def dot_matmul(*args: object) -> None:
            calls.append(("dot_matmul", args[1].shape))
            raise RuntimeError("no tensor cores here")

    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr("supsup_cli.kernels.torch_products.fused_gpu_kernel", lambda: Broken)
    monkeypatch.setattr("supsup_cli.kernels.torch_products._failed", set())
    packed, floats = _float_masks(5, 83, 0)
    rng = np.random.default_rng(1)
    for columns, kernel, message in ((9, "dot_matmul", "tensor cores"), (8, "matmul", "image")):
        matrix = rng.standard_normal((83, columns)).astype(np.float32)
        expected = floats.astype(np.float64) @ matrix
        with pytest.warns(RuntimeWarning, match=message):
            got = packed_matmul_torch(torch.from_numpy(packed), torch.from_numpy(matrix), 83)
        assert calls[-1] == (kernel, (83, columns))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
        again = packed_matmul_torch(torch.from_numpy(packed), torch.from_numpy(matrix), 83)
        np.testing.assert_allclose(again.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert len(calls) == 2


TENSOR_CORE_CHECK = """
import json, numpy as np, torch
from supsup_cli.kernels import triton_kernel
from supsup_cli.kernels.torch_products import packed_matmul_torch
torch.Tensor.is_cuda = property(lambda self: True)  # the dispatch of the CUDA path, on the CPU
rng = np.random.default_rng(11)
results = []
for rows, mask_bits, columns, spans in [(0, 50, 9, None), (1, 157, 9, None), (37, 157, 16, None),
                                        (70, 2051, 33, 3), (3, 1, 16, None), (9, 301, 3, 4)]:
    bits = rng.integers(0, 2, (rows, mask_bits)).astype(bool)
    packed = torch.from_numpy(np.packbits(bits, axis=1).reshape(rows, (mask_bits + 7) // 8))
    matrix = rng.standard_normal((mask_bits, columns)).astype(np.float32)
    matrix[:, 0] *= 1e-30  # below fp16's range: the per-column scale keeps it
    if spans is None:  # the dispatch by columns: vector kernel up to 8, tensor cores beyond
        got = packed_matmul_torch(packed, torch.from_numpy(matrix), mask_bits)
    elif columns > triton_kernel.MAX_COLUMNS:
        got = triton_kernel.dot_matmul(packed, torch.from_numpy(matrix), mask_bits, spans)
    else:
        got = triton_kernel.matmul(packed, torch.from_numpy(matrix), mask_bits, spans)
    exact = bits.astype(np.float64) @ matrix.astype(np.float64)
    magnitude = bits.astype(np.float64) @ np.abs(matrix.astype(np.float64))  # Σ |x_d| over bits
    scale = 2.0 ** np.ceil(np.log2(np.abs(matrix).max(axis=0)))
    # The split's bound (triton_kernel) plus fp32 sums of mask_bits terms (γ_D = D 2^-24).
    bound = (2.0**-22 + mask_bits * 2.0**-24) * magnitude
    bound += 2.0**-24 * scale * bits.sum(axis=1, keepdims=True)
    ok = tuple(got.shape) == exact.shape and got.dtype == torch.float32
    results.append(bool(ok and (np.abs(got.numpy() - exact) <= bound).all()))
print(json.dumps(results))
"""


def test_tensor_core_kernel_equals_float64_within_its_bound() -> None:
    """The tensor-core kernel (fp16 halves of scaled columns, fp32 sums) and the split vector
    kernel, by Triton's interpreter on the CPU: within the stated bound of the float64 product
    for D not a multiple of 8, k = 0 and 1, n = 9, 16 and 33, and a column of tiny values."""
    pytest.importorskip("triton")
    done = subprocess.run(
        [sys.executable, "-c", TENSOR_CORE_CHECK],
        capture_output=True,
        text=True,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True] * 6
