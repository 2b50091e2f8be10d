"""The fused GPU kernel for packed-mask products, in Triton: bits.packed_matmul_torch uses it for
CUDA tensors when Triton imports.

Why: the plain torch path unpacks each block of masks into floats in GPU memory and multiplies
them; for 2,500 lenet-300-100 masks that took 7 ms on an H100, six times the float stack's matvec.
This kernel reads each packed byte once into registers and adds, for each of its set bits, the
matching row of the matrix: no unpacked float is ever written. Triton ships with PyTorch's CUDA
wheels on Linux and compiles the kernel at first use into its own cache; the module is only
imported for CUDA tensors, and `SUPSUP_KERNEL=0` turns it off like the CPU kernel.
"""

from __future__ import annotations

from typing import Final

import torch
import triton
import triton.language as tl

# Fastest of the shapes tried on an H100 (k = 2,500 lenet-300-100 masks, one vector): 8 x 512
# bytes 0.46 ms, 8 x 256 0.69-0.78 ms, 16 x 128 1.7 ms; the float stack's matvec 1.09 ms.
BLOCK_ROWS: Final = 8  # masks per program: each matrix entry loaded serves this many masks
BLOCK_BYTES: Final = 512  # packed bytes per step of a program (4,096 mask bits)
# Each column re-reads the masks (8 columns: 7.1 ms): beyond this many, unpacking blocks for one
# matmul is faster (128 columns: 207 ms fused, 16 ms unpacked, on the H100).
MAX_COLUMNS: Final = 8


@triton.jit
def _products(
    packed,
    matrix,
    out,
    rows,
    nbytes,
    mask_bits,
    packed_stride,
    matrix_stride,
    out_stride,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_BYTES: tl.constexpr,
):
    """out[r, j] = sum of matrix[d, j] over the set bits d of mask r (bit 0 = the first byte's
    most significant bit, as np.packbits); one program per BLOCK_ROWS masks and column j."""
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    column = tl.program_id(1)
    total = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for start in range(0, nbytes, BLOCK_BYTES):
        byte = start + tl.arange(0, BLOCK_BYTES)
        keep = (row[:, None] < rows) & (byte[None, :] < nbytes)
        where = row[:, None].to(tl.int64) * packed_stride + byte[None, :]
        bits = tl.load(packed + where, mask=keep, other=0).to(tl.int32)
        for bit in tl.static_range(8):
            weight = byte * 8 + bit
            value = tl.load(
                matrix + weight.to(tl.int64) * matrix_stride + column,
                mask=weight < mask_bits,
                other=0.0,
            )
            chosen = ((bits >> (7 - bit)) & 1).to(tl.float32)
            total += tl.sum(chosen * value[None, :], axis=1)
    tl.store(out + row.to(tl.int64) * out_stride + column, total, mask=row < rows)


def matmul(packed: torch.Tensor, matrix: torch.Tensor, mask_bits: int) -> torch.Tensor:
    """Packed masks (k, B) uint8 times (D,) or (D, m) on the tensors' device -> float32 (k,) or
    (k, m). Padding bits past mask_bits must be zero (the store guarantees it)."""
    columns = matrix.reshape(mask_bits, -1).to(torch.float32).contiguous()
    packed = packed.contiguous()
    rows, nbytes = packed.shape
    out = torch.zeros((rows, columns.shape[1]), dtype=torch.float32, device=packed.device)
    if rows and columns.shape[1]:
        grid = (triton.cdiv(rows, BLOCK_ROWS), columns.shape[1])
        _products[grid](
            packed,
            columns,
            out,
            rows,
            nbytes,
            mask_bits,
            packed.stride(0),
            columns.stride(0),
            out.stride(0),
            BLOCK_ROWS=BLOCK_ROWS,
            BLOCK_BYTES=BLOCK_BYTES,
        )
    return out[:, 0] if matrix.ndim == 1 else out
