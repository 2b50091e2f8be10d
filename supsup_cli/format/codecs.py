"""Entropy-coded masks near the information bound (H2(density) bits per weight).

A mask codec splits one task's D mask bits into context groups, stores the count of ones of each
group, and range-codes each group's bits as i.i.d. Bernoulli(ones / size) with constriction's
range coder (`constriction.stream.queue`): two passes (count, then code) give each group its
exact empirical probability, which is what an adaptive per-group estimator converges to, while
keeping encode and decode vectorised. Groups that are all zeros or all ones cost only their
count. The byte layout is normative (formats/supsup-store-v1.md, "Packed masks"):

    blob = uint32 LE count of ones, one per group, in group order
           + the range coder's uint32 LE words, all coded groups in group order

Codecs (the registry users pick from with `--codec`):
- `range-site`: one group per mask site (layer).
- `range-site-prev`: two groups per site, split by the previous task's bit at the same position
  (masks of related tasks correlate); the first task of a store uses an all-zero previous mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    import constriction

from ..errors import ConfigError, StoreError
from ..progress import Progress
from .bits import pack_mask, packed_bytes, unpack_mask

COUNT_BYTES: Final = 4
WORD_BYTES: Final = 4
AUTO: Final = "auto"  # not a codec: encode with each and keep the smallest (see encode_store)
DEFAULT_CODEC: Final = AUTO
# A context codec decodes task t only after tasks 0..t-1; `auto` takes it only for a real gain.
CONTEXT_MIN_GAIN: Final = 0.01


@dataclass(frozen=True)
class Codec:
    """A registered mask codec: its name, what it models, and whether it needs the previous mask."""

    name: str
    summary: str
    uses_previous: bool

    def groups(
        self, site_sizes: Sequence[int], previous: np.ndarray | None
    ) -> list[tuple[slice | np.ndarray, int]]:
        """Each context group in coding order: its positions in the flat D bits (a slice for a
        whole site, else int64 indices) and its size."""
        groups: list[tuple[slice | np.ndarray, int]] = []
        start = 0
        for size in site_sizes:
            if self.uses_previous:
                context = previous[start : start + size]  # (size,) bool
                for chosen in (~context, context):
                    positions = start + np.flatnonzero(chosen)  # (n,) int64
                    groups.append((positions, positions.size))
            else:
                groups.append((slice(start, start + size), size))
            start += size
        return groups

    def group_count(self, site_count: int) -> int:
        return site_count * (2 if self.uses_previous else 1)

    def max_blob_bytes(self, site_sizes: Sequence[int]) -> int:
        """A generous bound on one blob (a reader refuses wider packed rows before reading them)."""
        coded = packed_bytes(sum(site_sizes))
        return self.group_count(len(site_sizes)) * (COUNT_BYTES + 2 * WORD_BYTES) + 2 * coded + 64


CODECS: Final = {
    codec.name: codec
    for codec in (
        Codec("range-site", "range coder, one Bernoulli per mask site", uses_previous=False),
        Codec(
            "range-site-prev",
            "range coder, per site two Bernoullis chosen by the previous task's bit",
            uses_previous=True,
        ),
    )
}


def get_codec(name: str) -> Codec:
    """The codec of a name users typed or a store names; unknown names list the valid ones."""
    if name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}; valid codecs: {', '.join([AUTO, *CODECS])}")
    return CODECS[name]


def _model(ones: int, size: int) -> constriction.stream.model.Bernoulli:
    import constriction  # here: only packing and packed stores need the coder

    # perfect=False fixes constriction's fast quantisation of p: part of the blob format.
    return constriction.stream.model.Bernoulli(ones / size, perfect=False)


def encode_mask(
    codec: Codec, bits: np.ndarray, site_sizes: Sequence[int], previous: np.ndarray | None = None
) -> bytes:
    """One task's flat bool mask (D,) -> its blob; `previous` is needed by context codecs."""
    bits = np.asarray(bits, dtype=bool).ravel()
    previous = _previous_or_zeros(codec, previous, bits.size)
    groups = codec.groups(site_sizes, previous)
    counts = np.array([int(bits[g].sum()) for g, _ in groups], dtype="<u4")  # (groups,)
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    for (positions, size), ones in zip(groups, counts, strict=True):
        if 0 < ones < size:
            encoder.encode(bits[positions].astype(np.int32), _model(int(ones), size))
    words = encoder.get_compressed().astype("<u4", copy=False)
    return counts.tobytes() + words.tobytes()


def decode_mask(
    codec: Codec, blob: bytes, site_sizes: Sequence[int], previous: np.ndarray | None = None
) -> np.ndarray:
    """A blob -> the flat bool mask (D,); a blob that is not a valid encoding is a StoreError."""
    mask_bits = sum(site_sizes)
    previous = _previous_or_zeros(codec, previous, mask_bits)
    groups = codec.groups(site_sizes, previous)
    header = len(groups) * COUNT_BYTES
    if len(blob) < header or (len(blob) - header) % WORD_BYTES:
        raise StoreError(f"packed mask of {len(blob)} bytes is truncated or misaligned")
    counts = np.frombuffer(blob, dtype="<u4", count=len(groups))  # (groups,)
    words = np.frombuffer(blob, dtype="<u4", offset=header).astype(np.uint32)  # (words,)
    bits = np.zeros(mask_bits, dtype=bool)
    import constriction

    decoder = constriction.stream.queue.RangeDecoder(words)
    for (positions, size), ones in zip(groups, counts, strict=True):
        if ones > size:
            raise StoreError(f"packed mask claims {ones} ones in a group of {size}")
        if ones == size:
            bits[positions] = True
        elif ones:
            try:
                symbols = decoder.decode(_model(int(ones), size), size)
            except Exception as error:  # constriction asserts on words no encoder could write
                raise StoreError(f"packed mask is not a valid encoding ({error})") from error
            if int(symbols.sum()) != ones:
                raise StoreError("packed mask does not decode to its stored counts")
            bits[positions] = symbols.astype(bool)
    if not decoder.maybe_exhausted():
        raise StoreError("packed mask has bytes left over after decoding")
    return bits


def _previous_or_zeros(codec: Codec, previous: np.ndarray | None, mask_bits: int) -> np.ndarray:
    if not codec.uses_previous:
        return np.zeros(0, dtype=bool)
    if previous is None:
        return np.zeros(mask_bits, dtype=bool)
    return np.asarray(previous, dtype=bool).ravel()


def encode_packed(
    codec: Codec,
    packed: Sequence[np.ndarray | None],
    site_sizes: Sequence[int],
    progress: Progress | None = None,
) -> list[bytes]:
    """Bit-packed masks (ceil(D/8),) in task order -> one blob per task.

    None stands for a task without a mask (dropped by Hopfield encoding): its blob is empty and
    the next task's context is the last mask before it.
    """
    mask_bits = sum(site_sizes)
    blobs, previous = [], None
    for index, row in enumerate(packed):
        if row is None:
            blobs.append(b"")
        else:
            bits = unpack_mask(row, mask_bits)  # (D,) bool
            blobs.append(encode_mask(codec, bits, site_sizes, previous))
            previous = bits
        if progress is not None:
            progress(index + 1, len(packed))
    return blobs


def encode_store(
    name: str,
    packed: Sequence[np.ndarray | None],
    site_sizes: Sequence[int],
    progress: Progress | None = None,
) -> tuple[Codec, list[bytes]]:
    """Blobs of every row with the named codec; `auto` encodes with each codec and keeps the
    smallest total (a context codec only if it saves CONTEXT_MIN_GAIN, for its sequential reads).
    """
    candidates = list(CODECS.values()) if name == AUTO else [get_codec(name)]
    total = len(candidates) * len(packed)
    best: tuple[float, Codec, list[bytes]] | None = None
    for turn, codec in enumerate(candidates):

        def report(done: int, _rows: int, offset: int = turn * len(packed)) -> None:
            if progress is not None:
                progress(offset + done, total)

        blobs = encode_packed(codec, packed, site_sizes, report)
        size = sum(map(len, blobs)) * (1 + CONTEXT_MIN_GAIN if codec.uses_previous else 1)
        if best is None or size < best[0]:
            best = (size, codec, blobs)
    return best[1], best[2]


def decode_packed(
    codec: Codec,
    blobs: Mapping[int, bytes] | Sequence[bytes],
    site_sizes: Sequence[int],
    wanted: Sequence[int] | None = None,
) -> np.ndarray:
    """Blobs by task index -> bit-packed masks (len(wanted), ceil(D/8)), all tasks by default.

    Context codecs decode the chain from task 0 to the last wanted task (task t's context is the
    nearest earlier task with a mask), so `blobs` must hold those; others only the wanted ones.
    """
    mask_bits = sum(site_sizes)
    wanted = list(range(len(blobs))) if wanted is None else list(wanted)
    decoded: dict[int, np.ndarray] = {}
    if codec.uses_previous:
        previous = None
        for index in range(max(wanted, default=-1) + 1):
            if blobs[index]:
                previous = decode_mask(codec, blobs[index], site_sizes, previous)
                decoded[index] = previous
    else:
        for index in set(wanted):
            if blobs[index]:
                decoded[index] = decode_mask(codec, blobs[index], site_sizes)
    missing = sorted(set(wanted) - set(decoded))
    if missing:
        raise StoreError(f"task(s) {missing} have no packed mask")
    rows = [pack_mask(decoded[index]) for index in wanted]
    return np.stack(rows) if rows else np.zeros((0, packed_bytes(mask_bits)), dtype=np.uint8)


def binary_entropy(p: float) -> float:
    """H2(p) in bits: the fewest bits per weight that a mask of density p can take on average."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


@dataclass(frozen=True)
class TaskSize:
    """One packed task: its kept weights and blob bytes, against the H2(density) floor."""

    task: int
    kept: int
    blob_bytes: int
    mask_bits: int

    @property
    def density(self) -> float:
        return self.kept / self.mask_bits

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.blob_bytes / self.mask_bits

    @property
    def bound(self) -> float:
        """H2(density): the bits per weight of an ideal code for i.i.d. bits of this density."""
        return binary_entropy(self.density)


@dataclass(frozen=True)
class PackReport:
    """What `pack` wrote: where, with which codec, each task's size, and how long it took."""

    path: str
    codec: str
    raw_dropped: bool
    tasks: tuple[TaskSize, ...]
    seconds: float
    stored_bytes: int
