"""Bit packing of masks: np.packbits order (most significant bit first), zero padding."""

from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import Final

import numpy as np
import torch

from . import bitkernel


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


# -- products of packed masks (k, ceil(D/8)) with vectors, one block of unpacked bits at a time --

PRODUCT_BLOCK_BITS: Final = 1 << 22  # unpacked elements per block: 4 Mi bits -> 16 MiB as float32
# On a GPU each block costs a few kernel launches: larger blocks (128 MiB as float32) keep the
# launches few while the unpacked block stays far below the float stack of all masks.
GPU_PRODUCT_BLOCK_BITS: Final = 1 << 25
# Up to this many columns the kernel's one-pass products beat one unpack + BLAS matmul.
KERNEL_MAX_COLUMNS: Final = 4


def _block_plan(rows: int, nbytes: int, block_bits: int = PRODUCT_BLOCK_BITS) -> tuple[int, int]:
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
    out = np.zeros((rows, *matrix.shape[1:]), dtype=np.float32)
    block_rows, block_bytes = _block_plan(rows, nbytes)
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
    block_rows, block_bytes = _block_plan(rows, nbytes)
    for c0 in range(0, nbytes, block_bytes):
        c1 = min(nbytes, c0 + block_bytes)
        d0, d1 = 8 * c0, min(8 * c1, mask_bits)
        for r0 in range(0, rows, block_rows):
            chunk = packed[r0 : r0 + block_rows, c0:c1]
            bits = np.unpackbits(chunk, axis=1, count=d1 - d0, bitorder="big")  # (r, b)
            out[d0:d1] += weights[r0 : r0 + block_rows] @ bits.astype(np.float32)
    return out


_SHIFTS: Final = (7, 6, 5, 4, 3, 2, 1, 0)  # most significant bit first, as np.packbits


def unpack_torch(packed: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 (r, b) on any device -> float32 (r, count) bits, unpacked where the tensor lives."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (r, b, 8)
    return bits.reshape(packed.shape[0], -1)[:, :count].float()


def _torch_block_bits(packed: torch.Tensor) -> int:
    return GPU_PRODUCT_BLOCK_BITS if packed.is_cuda else PRODUCT_BLOCK_BITS


_fused_failed = False  # set once the fused kernel raised in this process


@functools.cache
def fused_gpu_kernel() -> ModuleType | None:
    """triton_bitkernel, when Triton imports and SUPSUP_KERNEL is not 0 (imported at first use:
    Triton takes a moment to load, and CPU-only runs never need it)."""
    if not bitkernel.enabled():
        return None
    try:
        from . import triton_bitkernel
    except ImportError:
        return None
    return triton_bitkernel


def packed_matmul_torch(packed: torch.Tensor, matrix: torch.Tensor, mask_bits: int) -> torch.Tensor:
    """packed_matmul on the tensors' device (the CUDA path): (k, B) x (D,) or (D, m). On a GPU
    with Triton and few columns, one fused kernel; otherwise blocks unpacked and multiplied."""
    global _fused_failed  # one GPU the kernel cannot run on: the unpack path from then on
    columns = 1 if matrix.ndim == 1 else matrix.shape[1]
    fused = fused_gpu_kernel() if packed.is_cuda and not _fused_failed else None
    if fused is not None and columns <= fused.MAX_COLUMNS:
        try:
            return fused.matmul(packed, matrix, mask_bits)
        except Exception as error:  # Triton cannot build or run it here (an older GPU, say)
            _fused_failed = True
            message = f"the fused GPU kernel failed ({error}); products unpack masks instead"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    rows, nbytes = packed.shape
    out = torch.zeros((rows, *matrix.shape[1:]), dtype=torch.float32, device=matrix.device)
    block_rows, block_bytes = _block_plan(rows, nbytes, _torch_block_bits(packed))
    for c0 in range(0, nbytes, block_bytes):
        c1 = min(nbytes, c0 + block_bytes)
        d0, d1 = 8 * c0, min(8 * c1, mask_bits)
        for r0 in range(0, rows, block_rows):
            bits = unpack_torch(packed[r0 : r0 + block_rows, c0:c1], d1 - d0)  # (r, b)
            out[r0 : r0 + block_rows] += bits @ matrix[d0:d1].float()
    return out


def packed_rmatvec_torch(
    packed: torch.Tensor, weights: torch.Tensor, mask_bits: int
) -> torch.Tensor:
    """packed_rmatvec on the tensors' device: Σ_i w_i M_i -> float32 (D,)."""
    rows, nbytes = packed.shape
    out = torch.zeros(mask_bits, dtype=torch.float32, device=weights.device)
    block_rows, block_bytes = _block_plan(rows, nbytes, _torch_block_bits(packed))
    for c0 in range(0, nbytes, block_bytes):
        c1 = min(nbytes, c0 + block_bytes)
        d0, d1 = 8 * c0, min(8 * c1, mask_bits)
        for r0 in range(0, rows, block_rows):
            bits = unpack_torch(packed[r0 : r0 + block_rows, c0:c1], d1 - d0)  # (r, b)
            out[d0:d1] += weights[r0 : r0 + block_rows].float() @ bits
    return out
