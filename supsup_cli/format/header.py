"""What a store's attributes and task records say, parsed and checked (reader rules R3-R6 and
R9 of formats/supsup-store-v1.md): the header, the Hopfield and packed blocks, the task records.

The structure is declared once, in the JSON Schema (schema.py); this module adds what a schema
cannot say: the checks a reader makes first (a store, of a version and codec it reads) and the
rules between fields. Pure data: no zarr here; the store package reads and writes these.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from ..errors import ConfigError, StoreError
from . import codecs as pack
from .architectures import DIGITS_SHAPE, NetConfig
from .bits import packed_bytes
from .generator import GENERATOR_NAME
from .schema import block_problem, header_problem, is_int, record_problem

FORMAT_NAME: Final = "supsup-store"
FORMAT_VERSION: Final = 4  # the newest version this reads and creates (older stores stay 1
# until a mask is replaced (then 2) or packed without their raw masks (then 3))
ROW_MAP_VERSION: Final = 2  # version 2: tasks reach their rows through `task_rows` (a replace)
MAX_TASKS: Final = 1_000_000
RECORD_BYTES: Final = 4096
MAX_ROW_CHUNK: Final = 4096  # rows per chunk of the per-task arrays (header `row_chunk`)
MAX_ROW_CHUNK_BYTES: Final = 1 << 26  # and at most 64 MiB of the widest row per chunk
MAX_LOG_ROWS: Final = 100_000_000
MAX_REVISION: Final = 2**53  # commits that changed tasks; exact in any JSON reader
SLOT_ARRAYS: Final = {"mask_counts": "<u4", "score_sum": "<f4"}  # the header's `slots` digests
MAX_RECORD_TEXT: Final = 1_000  # characters of a record's `data` and `created`
MAX_HOPFIELD_BITS: Final = 16_384  # d x d float32 energy: 1 GiB at this limit
HOPFIELD_RULE: Final = "storkey-v1"
PACKED_VERSION: Final = 3  # version 3: a version 2 store whose raw mask rows were dropped
# Version 4: the row map from creation, and mask_counts and score_sum only where `slots` names
# them (a few tasks' masks are far smaller than 64 bits of per-weight sums a weight).
LEAN_VERSION: Final = 4
BLOB_LENGTH_BYTES: Final = 4  # each row of `packed`: uint32 LE blob length, blob, zero padding


@dataclass(frozen=True)
class HopfieldState:
    """The header's `hopfield` block: the tasks folded into the energy matrix Psi (in encoding
    order), those whose mask rows were dropped, and the generation that names Psi's arrays."""

    generation: int
    tasks: tuple[int, ...]
    dropped: tuple[int, ...]
    sha256: str

    def to_attrs(self) -> dict[str, Any]:
        return {
            "rule": HOPFIELD_RULE,
            "dtype": "float32",
            "generation": self.generation,
            "tasks": list(self.tasks),
            "dropped": list(self.dropped),
            "sha256": self.sha256,
        }

    @classmethod
    def from_attrs(cls, attrs: Any, mask_bits: int, task_count: int) -> HopfieldState:
        """Check the block (its schema, then reader rule R6) before any Hopfield array is read."""
        problem = block_problem("hopfield", attrs)
        if problem is not None:
            raise StoreError(problem)
        if mask_bits > MAX_HOPFIELD_BITS:
            raise StoreError(
                f"a Hopfield matrix needs d <= {MAX_HOPFIELD_BITS:,}; the network has {mask_bits:,}"
            )
        tasks, dropped = attrs["tasks"], attrs["dropped"]
        if max(tasks) >= task_count or not set(dropped) <= set(tasks):
            raise StoreError(
                "invalid 'hopfield' block: 'tasks' must be committed tasks "
                f"(< {task_count}) and 'dropped' a subset of them"
            )
        return cls(attrs["generation"], tuple(tasks), tuple(dropped), attrs["sha256"])


def hopfield_checksum(psi: np.ndarray, pattern_sum: np.ndarray) -> str:
    """sha256 of Psi's little-endian float32 bytes followed by the pattern sum's int32 bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(psi, dtype="<f4").tobytes())
    digest.update(np.ascontiguousarray(pattern_sum, dtype="<i4").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class PackedState:
    """The header's `packed` block: mask rows entropy-coded by a codec of codecs.py, in the rows of
    the `packed` array, beside the raw rows or instead of them (raw dropped, version 3)."""

    codec: str
    rows: int
    width: int
    dropped: bool

    def to_attrs(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "rows": self.rows,
            "width": self.width,
            "raw": "dropped" if self.dropped else "kept",
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], net: NetConfig, row_count: int) -> PackedState:
        """Reader rule R6 on a block the schema passed: rows and width within the store's."""
        rows, width = attrs["rows"], attrs["width"]
        if rows > row_count:
            raise StoreError(f"invalid 'packed' rows {rows!r} (must be in [0, {row_count}])")
        sites = [math.prod(shape) for shape in net.mask_shapes]
        widest = BLOB_LENGTH_BYTES + pack.get_codec(attrs["codec"]).max_blob_bytes(sites)
        if width > widest:
            raise StoreError(f"invalid 'packed' width {width!r} (must be in [4, {widest}])")
        return cls(attrs["codec"], rows, width, attrs["raw"] == "dropped")


@dataclass(frozen=True)
class StoreHeader:
    """The `supsup` attributes of the group: what the store was made with, and the commit count."""

    net: NetConfig
    mask_rule: str
    density: float | None
    task_count: int = 0
    hopfield: HopfieldState | None = None
    version: int = 1
    revision: int = 0  # version 2: commits that changed masks (appends and replaces)
    rows: int = 0  # version 2: rows of `masks` and `records` in use (task_count or one more)
    log_count: int = 0  # committed rows of the audit log
    packed: PackedState | None = None  # entropy-coded mask rows (`supsup pack`)
    # sha256 of the current row of each per-weight array the store holds: (name, digest) pairs
    slots: tuple[tuple[str, str], ...] | None = None
    row_chunk: int = 1  # rows per chunk of masks, records and task_stats (1 before it existed)
    er_scale: float | None = None  # topk: per-site densities by the Erdos-Renyi budget

    @property
    def commit_count(self) -> int:
        """Commits that changed masks: task_count in version 1, where every one appended."""
        return self.task_count if self.version == 1 else self.revision

    @property
    def slot(self) -> int:
        """The current row of the double-buffered arrays (mask_counts, score_sum, task_rows)."""
        return self.commit_count % 2

    @property
    def slot_arrays(self) -> tuple[str, ...]:
        """The per-weight arrays the store holds: both before version 4, then those `slots`
        names."""
        if self.version < LEAN_VERSION:
            return tuple(SLOT_ARRAYS)
        return tuple(name for name, _ in self.slots or ())

    def slot_digest(self, name: str) -> str | None:
        """The committed sha256 of a per-weight array's current row (None: not recorded)."""
        return dict(self.slots or ()).get(name)

    @property
    def row_count(self) -> int:
        return self.task_count if self.version == 1 else self.rows

    @property
    def mask_bits(self) -> int:
        return self.net.mask_bits

    @property
    def mask_bytes(self) -> int:
        return packed_bytes(self.net.mask_bits)

    def to_attrs(self) -> dict[str, Any]:
        return (
            {
                "format": FORMAT_NAME,
                "version": self.version,
                "network": {k: v for k, v in self.net.to_dict().items() if k != "seed"},
                "generator": {"name": GENERATOR_NAME, "seed": self.net.seed},
                "mask": {
                    "rule": self.mask_rule,
                    "density": self.density,
                    "bits": self.mask_bits,
                    "bytes": self.mask_bytes,
                }
                | ({} if self.er_scale is None else {"er_scale": self.er_scale}),
                "task_count": self.task_count,
            }
            | ({} if self.hopfield is None else {"hopfield": self.hopfield.to_attrs()})
            | ({} if self.version == 1 else {"revision": self.revision, "rows": self.rows})
            | ({"log_count": self.log_count} if self.log_count else {})
            | ({"row_chunk": self.row_chunk} if self.row_chunk != 1 else {})
            | ({} if self.packed is None else {"packed": self.packed.to_attrs()})
            | ({} if self.slots is None else {"slots": dict(self.slots)})
        )

    @classmethod
    def from_attrs(cls, attrs: Any) -> StoreHeader:
        """Check the attributes in the order of reader rules R3-R6: what a reader must know
        first (a store, of a version and a codec it reads), then the schema, then the rules
        between fields."""
        if not isinstance(attrs, dict) or attrs.get("format") != FORMAT_NAME:
            raise StoreError(
                "not a supsup store (no 'supsup' attributes with format 'supsup-store')"
            )
        version = attrs.get("version")
        if is_int(version) and version > FORMAT_VERSION:
            raise StoreError(
                f"store format version {version} is newer than this supsup reads "
                f"({FORMAT_VERSION}); upgrade supsup"
            )
        codec = attrs["packed"].get("codec") if isinstance(attrs.get("packed"), dict) else None
        if isinstance(codec, str) and codec not in pack.CODECS:
            raise StoreError(
                f"masks are packed with codec {codec!r}, which this supsup does not know "
                f"(known: {', '.join(pack.CODECS)}); upgrade supsup"
            )
        problem = header_problem(attrs)
        if problem is not None:
            raise StoreError(f"invalid store attributes: {problem}")
        return cls._cross_checked(attrs)

    @classmethod
    def _cross_checked(cls, attrs: dict[str, Any]) -> StoreHeader:
        """Reader rule R6 on attributes the schema passed: sizes against the network, counts
        against each other, the blocks against both."""
        network, mask, version = attrs["network"], attrs["mask"], attrs["version"]
        try:
            net = NetConfig(
                arch=network["arch"],
                outputs=network["outputs"],
                seed=attrs["generator"]["seed"],
                inputs=network["inputs"],
                input_shape=tuple(network.get("input_shape", DIGITS_SHAPE)),
            )
        except ConfigError as error:
            raise StoreError(f"invalid store attributes: {error}") from error
        if mask["bits"] != net.mask_bits or mask["bytes"] != packed_bytes(net.mask_bits):
            raise StoreError(
                f"mask size {mask['bits']} bits does not match network {net.arch} "
                f"with {net.outputs} outputs ({net.mask_bits} bits)"
            )
        count = attrs["task_count"]
        revision, rows = count, count
        if version >= ROW_MAP_VERSION:
            revision, rows = attrs["revision"], attrs["rows"]
            if revision < count:
                raise StoreError(f"invalid revision {revision!r} (must be >= task_count {count})")
            if not count <= rows <= count + 1:
                raise StoreError(f"invalid rows {rows!r} (must be task_count or task_count + 1)")
        er_scale = mask.get("er_scale")
        if er_scale is not None and mask["rule"] != "topk":
            raise StoreError("invalid store attributes: 'er_scale' needs the topk rule")
        row_chunk = attrs.get("row_chunk", 1)
        widest = max(packed_bytes(net.mask_bits), RECORD_BYTES, 4 * net.stats_size)
        most = max(1, min(MAX_ROW_CHUNK, MAX_ROW_CHUNK_BYTES // widest))
        if row_chunk > most:
            raise StoreError(
                f"invalid row_chunk {row_chunk!r} (must be in [1, {most}] for this network)"
            )
        hopfield = attrs.get("hopfield")
        if hopfield is not None:
            hopfield = HopfieldState.from_attrs(hopfield, net.mask_bits, count)
        packed = attrs.get("packed")
        if packed is not None:
            packed = PackedState.from_attrs(packed, net, rows)
        slots = attrs.get("slots")
        return cls(
            net,
            mask["rule"],
            None if mask["density"] is None else float(mask["density"]),
            count,
            hopfield,
            version,
            revision,
            rows,
            attrs.get("log_count", 0),
            packed,
            slots=None
            if slots is None
            else tuple((name, slots[name]) for name in SLOT_ARRAYS if name in slots),
            row_chunk=row_chunk,
            er_scale=None if er_scale is None else float(er_scale),
        )


def slot_digest(row: np.ndarray, name: str) -> str:
    """sha256 of one mask_counts or score_sum row as little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(row, dtype=SLOT_ARRAYS[name]).tobytes()).hexdigest()


@dataclass(frozen=True)
class TaskRecord:
    """One row of the task table: how a mask was made and the checksum of its bytes."""

    index: int
    data: str
    classes: tuple[int, ...]
    rule: str
    density: float | None
    accuracy: float | None
    sha256: str
    train: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    seconds: float | None = None
    revision: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        return data

    def encode(self) -> np.ndarray:
        raw = json.dumps(self.to_dict(), sort_keys=True, allow_nan=False).encode()
        if len(raw) > RECORD_BYTES:
            raise StoreError(f"task record is {len(raw)} bytes; the limit is {RECORD_BYTES}")
        row = np.zeros(RECORD_BYTES, dtype=np.uint8)
        row[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        return row

    @classmethod
    def decode(cls, row: np.ndarray, index: int, header: StoreHeader) -> TaskRecord:
        """Parse one record row and check it against the header (reader rule R9)."""
        return cls.decode_rows(row[None], [index], header)[0]

    @classmethod
    def decode_rows(
        cls, rows: np.ndarray, indices: Sequence[int], header: StoreHeader
    ) -> list[TaskRecord]:
        """Parse record rows (n, RECORD_BYTES) of the given tasks (reader rule R9). The zero
        padding is found for all rows at once: a store of thousands of tasks opens faster."""
        width = rows.shape[1]
        written = rows[:, ::-1] != 0
        lengths = np.where(written.any(axis=1), width - written.argmax(axis=1), 0)
        text = np.ascontiguousarray(rows).tobytes()
        return [
            cls._parse(text[row * width : row * width + int(length)], index, header)
            for row, (length, index) in enumerate(zip(lengths, indices, strict=True))
        ]

    @classmethod
    def _parse(cls, raw: bytes, index: int, header: StoreHeader) -> TaskRecord:
        try:
            data = json.loads(raw.decode())
        except (ValueError, RecursionError) as error:  # bad UTF-8/JSON, deep nesting, huge ints
            raise StoreError(f"task {index}: record is not valid JSON ({error})") from error
        problem = record_problem(data)
        if problem is None:  # the schema passed: then reader rule R9's rules between fields
            problem = cls._cross_problem(data, index, header.net.outputs)
        if problem is not None:
            raise StoreError(f"task {index}: invalid record: {problem}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["classes"] = tuple(data["classes"])
        return cls(**known)

    @staticmethod
    def _cross_problem(data: dict[str, Any], index: int, outputs: int) -> str | None:
        """What the schema cannot say: the record's row, its network's outputs, printable text."""
        if data["index"] != index:
            return f"'index' {data['index']!r} != row {index}"
        if max(data["classes"]) >= outputs:
            return f"'classes' must be outputs < {outputs}"
        for key in ("data", "created"):  # shown on terminals: printable text only
            if not data.get(key, "").isprintable():
                return f"'{key}' is not printable text"
        return None


def mask_checksum(packed: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(packed, dtype=np.uint8)).hexdigest()
