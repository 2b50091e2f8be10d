"""The fused GPU kernels for packed-mask products, in Triton: torch_products uses them for CUDA
tensors when Triton imports.

Why: the plain torch path unpacks each block of masks into floats in GPU memory and multiplies
them; for 2,500 lenet-300-100 masks that took 7 ms on an H100, six times the float stack's matvec.
These kernels read each packed byte once into registers: no unpacked float is ever written.

- `matmul` for few columns (a batch's gradient): for each set bit, add the matching entry of the
  column. The column is loaded as (bytes, 8) tiles, each byte's 8 floats contiguous (one wide
  load per thread instead of 8 strided ones), and when the masks alone give too few programs to
  fill the GPU, the bytes are split among several programs whose partial sums are added after.
- `dot_matmul` for many columns (per-image gradients): each tile of packed bytes is expanded to
  fp16 0/1 values in registers and multiplied with `tl.dot` on tensor cores, accumulating in fp32.
  fp16 has 11 significant bits, so each column is scaled by a power of two to at most 1 in
  magnitude and split into two fp16 parts, hi + lo (two dots): per element the split loses at
  most 2^-22 |x| + 2^-24 s (s: the column's scale), so a product is within
  2^-22 Σ|x_d| + 2^-24 s popcount(mask) of the exact one, plus fp32 accumulation.

Triton ships with PyTorch's CUDA wheels on Linux and compiles the kernels at first use into its
own cache; the module is only imported for CUDA tensors, and `SUPSUP_KERNEL=0` turns it off like
the CPU kernel. Tests run both through Triton's interpreter (TRITON_INTERPRET=1) on the CPU.
"""

from __future__ import annotations

from typing import Final

import torch
import triton
import triton.language as tl

# The vector kernel's tile: 8 masks x 64 bytes x 8 bits = 4,096 products per step, as many as the
# fastest shape measured on an H100 for the earlier one-load-per-bit form (8 masks x 512 bytes,
# 0.46 ms at k = 2,500; the float stack's matvec 1.09 ms). Not yet measured in this form.
BLOCK_ROWS: Final = 8  # masks per program: each matrix entry loaded serves this many masks
BLOCK_BYTES: Final = 64  # packed bytes per step of a program (512 mask bits)
# Each column re-reads the masks: beyond this many, the tensor-core kernel.
MAX_COLUMNS: Final = 8
# Programs wanted per streaming multiprocessor: more hide the latency of the loads.
PROGRAMS_PER_SM: Final = 4
# The tensor-core kernel's tiles: masks x mask bits x columns per step (tl.dot needs >= 16 each),
# as Triton's matmul tutorial tiles fp16 (128 x 64 x 128, 8 warps, 3 stages in flight: ~100 KiB
# of shared memory). Unmeasured here: no GPU was lent. Every program along the masks re-reads
# the matrix; programs that run together read the same tiles, which L2 then holds.
DOT_ROWS: Final = 128
DOT_BITS: Final = 64
DOT_MAX_COLUMNS_PER_PROGRAM: Final = 128
DOT_WARPS: Final = 8
DOT_STAGES: Final = 3


@triton.jit
def _products(
    packed,
    matrix,
    partial,
    rows,
    nbytes,
    mask_bits,
    span,
    packed_stride,
    matrix_stride,
    partial_stride,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_BYTES: tl.constexpr,
):
    """partial[s, r, j] = sum of matrix[d, j] over the set bits d of mask r within bytes
    [s * span, (s + 1) * span) (bit 0 = the first byte's most significant bit, as np.packbits);
    one program per BLOCK_ROWS masks, column j and span s."""
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    column = tl.program_id(1)
    first = tl.program_id(2) * span
    last = tl.minimum(first + span, nbytes)
    shifts = 7 - tl.arange(0, 8)
    # Summed along bytes and bits once at the end: no cross-thread reduction inside the loop.
    total = tl.zeros((BLOCK_ROWS, BLOCK_BYTES, 8), dtype=tl.float32)
    for start in range(first, last, BLOCK_BYTES):
        byte = start + tl.arange(0, BLOCK_BYTES)
        keep = (row[:, None] < rows) & (byte[None, :] < last)
        where = row[:, None].to(tl.int64) * packed_stride + byte[None, :]
        bits = tl.load(packed + where, mask=keep, other=0).to(tl.int32)  # (R, B)
        weight = byte[:, None] * 8 + tl.arange(0, 8)[None, :]  # (B, 8): contiguous per byte
        value = tl.load(
            matrix + weight.to(tl.int64) * matrix_stride + column,
            mask=weight < mask_bits,
            other=0.0,
        )
        chosen = (bits[:, :, None] >> shifts[None, None, :]) & 1  # (R, B, 8)
        total += tl.where(chosen != 0, value[None, :, :], 0.0)
    sums = tl.sum(tl.sum(total, axis=2), axis=1)
    where = tl.program_id(2).to(tl.int64) * partial_stride + row.to(tl.int64) * tl.num_programs(1)
    tl.store(partial + where + column, sums, mask=row < rows)


@triton.jit
def _dot_products(
    packed,
    high,
    low,
    partial,
    rows,
    columns,
    nbytes,
    mask_bits,
    span,
    packed_stride,
    matrix_stride,
    partial_stride,
    DOT_ROWS: tl.constexpr,
    DOT_BITS: tl.constexpr,
    DOT_COLUMNS: tl.constexpr,
):
    """partial[s, r, j] = Σ_d bit(r, d) (high[d, j] + low[d, j]) over the mask bits d in bytes
    [s * span, (s + 1) * span): packed tiles expanded to fp16 0/1 in registers, tl.dot on
    tensor cores, fp32 accumulation; one program per DOT_ROWS masks, DOT_COLUMNS columns, span."""
    row = tl.program_id(0) * DOT_ROWS + tl.arange(0, DOT_ROWS)
    column = tl.program_id(1) * DOT_COLUMNS + tl.arange(0, DOT_COLUMNS)
    first = tl.program_id(2) * span
    last = tl.minimum(first + span, nbytes)
    shifts = 7 - tl.arange(0, 8)
    total = tl.zeros((DOT_ROWS, DOT_COLUMNS), dtype=tl.float32)
    for start in range(first, last, DOT_BITS // 8):
        byte = start + tl.arange(0, DOT_BITS // 8)
        keep = (row[:, None] < rows) & (byte[None, :] < last)
        where = row[:, None].to(tl.int64) * packed_stride + byte[None, :]
        bytes_ = tl.load(packed + where, mask=keep, other=0).to(tl.int32)  # (R, BITS/8)
        bits = (bytes_[:, :, None] >> shifts[None, None, :]) & 1  # (R, BITS/8, 8)
        bits = tl.reshape(bits, (DOT_ROWS, DOT_BITS)).to(tl.float16)  # bit d = 8 * byte + b
        weight = start * 8 + tl.arange(0, DOT_BITS)
        wanted = (weight[:, None] < mask_bits) & (column[None, :] < columns)
        at = weight[:, None].to(tl.int64) * matrix_stride + column[None, :]
        total = tl.dot(bits, tl.load(high + at, mask=wanted, other=0.0), total)
        total = tl.dot(bits, tl.load(low + at, mask=wanted, other=0.0), total)
    where = tl.program_id(2).to(tl.int64) * partial_stride + row[:, None].to(tl.int64) * columns
    keep = (row[:, None] < rows) & (column[None, :] < columns)
    tl.store(partial + where + column[None, :], total, mask=keep)


def _spans(nbytes: int, programs: int, step: int, device: torch.device, spans: int | None) -> int:
    """Bytes per program along the masks (a multiple of `step`): split so that about
    PROGRAMS_PER_SM programs per multiprocessor run when the masks alone give fewer."""
    if spans is None:
        spans = 1
        if device.type == "cuda":
            wanted = (
                PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
            )
            spans = max(1, min(-(-wanted // max(1, programs)), -(-nbytes // step)))
    steps = -(-max(1, nbytes) // step)
    return -(-steps // spans) * step


def _packed_rows(packed: torch.Tensor) -> torch.Tensor:
    """Packed masks whose bytes are contiguous within a row (a slice of columns stays a view)."""
    return packed if packed.stride(1) == 1 else packed.contiguous()


def matmul(
    packed: torch.Tensor, matrix: torch.Tensor, mask_bits: int, spans: int | None = None
) -> torch.Tensor:
    """Packed masks (k, B) uint8 times (D,) or (D, m) on the tensors' device -> float32 (k,) or
    (k, m). Padding bits past mask_bits must be zero (the store guarantees it). `spans` forces
    the number of programs along the bytes (tests; by default it follows the GPU's size)."""
    columns = matrix.reshape(mask_bits, -1).to(torch.float32).contiguous()
    packed = _packed_rows(packed)
    rows, nbytes = packed.shape
    width = columns.shape[1]
    if not rows or not width:
        out = torch.zeros((rows, width), dtype=torch.float32, device=packed.device)
        return out[:, 0] if matrix.ndim == 1 else out
    row_programs = triton.cdiv(rows, BLOCK_ROWS)
    span = _spans(nbytes, row_programs * width, BLOCK_BYTES, packed.device, spans)
    count = triton.cdiv(max(1, nbytes), span)
    partial = torch.zeros((count, rows, width), dtype=torch.float32, device=packed.device)
    _products[(row_programs, width, count)](
        packed,
        columns,
        partial,
        rows,
        nbytes,
        mask_bits,
        span,
        packed.stride(0),
        columns.stride(0),
        partial.stride(0),
        BLOCK_ROWS=BLOCK_ROWS,
        BLOCK_BYTES=BLOCK_BYTES,
    )
    out = partial.sum(0) if count > 1 else partial[0]
    return out[:, 0] if matrix.ndim == 1 else out


def split_halves(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D, m) float -> fp16 high and low parts of matrix / scale, and the per-column scale (a
    power of two, so the division is exact): high + low carries 22 significant bits."""
    matrix = matrix.to(torch.float32)
    largest = matrix.abs().amax(dim=0)
    scale = torch.where(largest > 0, torch.exp2(torch.ceil(torch.log2(largest))), 1.0)
    scaled = matrix / scale
    high = scaled.to(torch.float16)
    low = (scaled - high.to(torch.float32)).to(torch.float16)
    return high.contiguous(), low.contiguous(), scale


def dot_matmul(
    packed: torch.Tensor, matrix: torch.Tensor, mask_bits: int, spans: int | None = None
) -> torch.Tensor:
    """Packed masks (k, B) uint8 times (D, m) on tensor cores -> float32 (k, m), within the
    bound in the module's docstring. Padding bits past mask_bits must be zero."""
    matrix = matrix.reshape(mask_bits, -1)
    packed = _packed_rows(packed)
    rows, nbytes = packed.shape
    width = matrix.shape[1]
    if not rows or not width:
        return torch.zeros((rows, width), dtype=torch.float32, device=packed.device)
    high, low, scale = split_halves(matrix)
    block_columns = min(DOT_MAX_COLUMNS_PER_PROGRAM, max(16, triton.next_power_of_2(width)))
    grid_rows, grid_columns = triton.cdiv(rows, DOT_ROWS), triton.cdiv(width, block_columns)
    span = _spans(nbytes, grid_rows * grid_columns, DOT_BITS // 8, packed.device, spans)
    count = triton.cdiv(max(1, nbytes), span)
    partial = torch.zeros((count, rows, width), dtype=torch.float32, device=packed.device)
    _dot_products[(grid_rows, grid_columns, count)](
        packed,
        high,
        low,
        partial,
        rows,
        width,
        nbytes,
        mask_bits,
        span,
        packed.stride(0),
        high.stride(0),
        partial.stride(0),
        DOT_ROWS=DOT_ROWS,
        DOT_BITS=DOT_BITS,
        DOT_COLUMNS=block_columns,
        num_warps=DOT_WARPS,
        num_stages=DOT_STAGES,
    )
    out = partial.sum(0) if count > 1 else partial[0]
    return out * scale
