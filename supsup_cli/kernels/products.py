"""Products of packed masks (k, ceil(D/8)) with vectors and matrices on the CPU: the C kernel
(c_kernel.py) where it builds, else numpy one block of unpacked bits at a time."""

from __future__ import annotations

from typing import Final

import numpy as np

from ..format.bits import packed_bytes
from . import c_kernel as bitkernel

PRODUCT_BLOCK_BITS: Final = 1 << 22  # unpacked elements per block: 4 Mi bits -> 16 MiB as float32
# Up to this many columns, one matvec per column; beyond, the kernel's table product (matmat).
KERNEL_MAX_COLUMNS: Final = 4


def block_plan(rows: int, nbytes: int, block_bits: int = PRODUCT_BLOCK_BITS) -> tuple[int, int]:
    """Rows and bytes per block so that one unpacked float block stays near block_bits."""
    block_bytes = max(1, min(nbytes, block_bits // 8))
    block_rows = max(1, min(rows, block_bits // (8 * block_bytes)))
    return block_rows, block_bytes


def _check_packed(packed: np.ndarray, mask_bits: int) -> None:
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != packed_bytes(mask_bits):
        raise ValueError(
            f"packed masks must be uint8 (k, {packed_bytes(mask_bits)}), got "
            f"{packed.dtype} {packed.shape}"
        )


def packed_matmul(packed: np.ndarray, matrix: np.ndarray, mask_bits: int) -> np.ndarray:
    """Mask bits times a matrix without unpacking all masks: (k, B) x (D,) or (D, m) -> (k, ...).

    float32 result; memory is the packed masks plus one unpacked block (PRODUCT_BLOCK_BITS).
    """
    _check_packed(packed, mask_bits)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.shape[0] != mask_bits:
        raise ValueError(f"matrix has {matrix.shape[0]} rows, the masks have {mask_bits} bits")
    rows, nbytes = packed.shape
    library = bitkernel.kernel()
    if library is not None and matrix.ndim == 1:
        return bitkernel.matvec(library, packed, matrix)
    if library is not None and matrix.shape[1] <= KERNEL_MAX_COLUMNS:
        columns = [bitkernel.matvec(library, packed, column) for column in matrix.T]
        return np.stack(columns, axis=1) if columns else np.zeros((rows, 0), np.float32)
    if library is not None:  # many columns (per-image gradients): the kernel's tables
        return bitkernel.matmat(library, packed, matrix)
    out = np.zeros((rows, *matrix.shape[1:]), dtype=np.float32)
    block_rows, block_bytes = block_plan(rows, nbytes)
    for c0 in range(0, nbytes, block_bytes):
        c1 = min(nbytes, c0 + block_bytes)
        d0, d1 = 8 * c0, min(8 * c1, mask_bits)
        part = matrix[d0:d1]  # (b,) or (b, m)
        for r0 in range(0, rows, block_rows):
            chunk = packed[r0 : r0 + block_rows, c0:c1]
            bits = np.unpackbits(chunk, axis=1, count=d1 - d0, bitorder="big")  # (r, b)
            out[r0 : r0 + block_rows] += bits.astype(np.float32) @ part
    return out


def packed_rmatvec(packed: np.ndarray, weights: np.ndarray, mask_bits: int) -> np.ndarray:
    """Weighted sum of the masks, Σ_i w_i M_i -> float32 (D,) (subset sums with 0/1 weights)."""
    _check_packed(packed, mask_bits)
    weights = np.ascontiguousarray(weights, dtype=np.float32).ravel()
    if weights.shape[0] != packed.shape[0]:
        raise ValueError(f"{weights.shape[0]} weights for {packed.shape[0]} masks")
    rows, nbytes = packed.shape
    library = bitkernel.kernel()
    if library is not None:
        return bitkernel.rmatvec(library, packed, weights, mask_bits)
    out = np.zeros(mask_bits, dtype=np.float32)
    block_rows, block_bytes = block_plan(rows, nbytes)
    for c0 in range(0, nbytes, block_bytes):
        c1 = min(nbytes, c0 + block_bytes)
        d0, d1 = 8 * c0, min(8 * c1, mask_bits)
        for r0 in range(0, rows, block_rows):
            chunk = packed[r0 : r0 + block_rows, c0:c1]
            bits = np.unpackbits(chunk, axis=1, count=d1 - d0, bitorder="big")  # (r, b)
            out[d0:d1] += weights[r0 : r0 + block_rows] @ bits.astype(np.float32)
    return out
