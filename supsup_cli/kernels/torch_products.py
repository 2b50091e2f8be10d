"""Products of packed masks with tensors where the tensors live (the CUDA path): on a GPU with
Triton, the fused vector kernel for few columns and the tensor-core kernel for more; otherwise
(or when a kernel fails) blocks unpacked on the device and multiplied."""

from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import Final

import torch

from . import c_kernel
from .products import PRODUCT_BLOCK_BITS, block_plan

# On a GPU each block costs a few kernel launches: larger blocks (128 MiB as float32) keep the
# launches few while the unpacked block stays far below the float stack of all masks.
GPU_PRODUCT_BLOCK_BITS: Final = 1 << 25

_SHIFTS: Final = (7, 6, 5, 4, 3, 2, 1, 0)  # most significant bit first, as np.packbits


def unpack_torch(packed: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 (r, b) on any device -> float32 (r, count) bits, unpacked where the tensor lives."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (r, b, 8)
    return bits.reshape(packed.shape[0], -1)[:, :count].float()


def _torch_block_bits(packed: torch.Tensor) -> int:
    return GPU_PRODUCT_BLOCK_BITS if packed.is_cuda else PRODUCT_BLOCK_BITS


_failed: set[str] = set()  # the fused kernels that raised in this process (never tried again)


@functools.cache
def fused_gpu_kernel() -> ModuleType | None:
    """triton_kernel, when Triton imports and SUPSUP_KERNEL is not 0 (imported at first use:
    Triton takes a moment to load, and CPU-only runs never need it)."""
    if not c_kernel.enabled():
        return None
    try:
        from . import triton_kernel
    except ImportError:
        return None
    return triton_kernel


def packed_matmul_torch(packed: torch.Tensor, matrix: torch.Tensor, mask_bits: int) -> torch.Tensor:
    """packed_matmul on the tensors' device (the CUDA path): (k, B) x (D,) or (D, m). On a GPU
    with Triton: up to MAX_COLUMNS columns the fused vector kernel, beyond it the tensor-core
    kernel (fp16 halves, fp32 sums: see triton_kernel); otherwise blocks unpacked and multiplied."""
    columns = 1 if matrix.ndim == 1 else matrix.shape[1]
    fused = fused_gpu_kernel() if packed.is_cuda else None
    if fused is not None:
        name = "matmul" if columns <= fused.MAX_COLUMNS else "dot_matmul"
        if name not in _failed:
            try:
                return getattr(fused, name)(packed, matrix, mask_bits)
            except Exception as error:  # Triton cannot build or run it here (an older GPU, say)
                _failed.add(name)  # one GPU the kernel cannot run on: unpack from then on
                message = f"the fused GPU kernel failed ({error}); products unpack masks instead"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
    rows, nbytes = packed.shape
    out = torch.zeros((rows, *matrix.shape[1:]), dtype=torch.float32, device=matrix.device)
    block_rows, block_bytes = block_plan(rows, nbytes, _torch_block_bits(packed))
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
    block_rows, block_bytes = block_plan(rows, nbytes, _torch_block_bits(packed))
    for c0 in range(0, nbytes, block_bytes):
        c1 = min(nbytes, c0 + block_bytes)
        d0, d1 = 8 * c0, min(8 * c1, mask_bits)
        for r0 in range(0, rows, block_rows):
            bits = unpack_torch(packed[r0 : r0 + block_rows, c0:c1], d1 - d0)  # (r, b)
            out[d0:d1] += weights[r0 : r0 + block_rows].float() @ bits
    return out
