"""What a store's attributes and task records say, parsed and checked (reader rules R2-R6 of
formats/supsup-store-v1.md): the header, the Hopfield and packed blocks, the task records.

Pure data: no zarr here. `store.py` reads these from the group and writes them back.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from ..errors import ConfigError, StoreError
from . import codecs as pack
from .architectures import NetConfig
from .bits import packed_bytes
from .generator import GENERATOR_NAME
from .rules import MASK_RULES, check_rule

FORMAT_NAME: Final = "supsup-store"
FORMAT_VERSION: Final = 3  # the newest version this reads; stores stay 1 until a mask is
# replaced (then 2) or packed without their raw masks (then 3)
ROW_MAP_VERSION: Final = 2  # version 2: tasks reach their rows through `task_rows` (a replace)
MAX_TASKS: Final = 1_000_000
RECORD_BYTES: Final = 4096
MAX_ROW_CHUNK: Final = 4096  # rows per chunk of the per-task arrays (header `row_chunk`)
MAX_ROW_CHUNK_BYTES: Final = 1 << 26  # and at most 64 MiB of the widest row per chunk
MAX_LOG_ROWS: Final = 100_000_000
MAX_REVISION: Final = 2**53  # commits that changed tasks; exact in any JSON reader
SHA256_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
SLOT_ARRAYS: Final = {"mask_counts": "<u4", "score_sum": "<f4"}  # the header's `slots` digests
MAX_RECORD_TEXT: Final = 1_000  # characters of a record's `data` and `created`
MAX_HOPFIELD_BITS: Final = 16_384  # d x d float32 energy: 1 GiB at this limit
HOPFIELD_RULE: Final = "storkey-v1"
PACKED_VERSION: Final = 3  # version 3: a version 2 store whose raw mask rows were dropped
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
        """Parse and check the block (reader rule R10) before any Hopfield array is read."""
        if not isinstance(attrs, dict):
            raise StoreError("invalid 'hopfield' block: not an object")
        if attrs.get("rule") != HOPFIELD_RULE or attrs.get("dtype") != "float32":
            raise StoreError(
                f"unknown Hopfield rule or dtype {attrs.get('rule')!r}/{attrs.get('dtype')!r}"
            )
        if mask_bits > MAX_HOPFIELD_BITS:
            raise StoreError(
                f"a Hopfield matrix needs d <= {MAX_HOPFIELD_BITS:,}; the network has {mask_bits:,}"
            )
        generation, tasks, dropped = (attrs.get(k) for k in ("generation", "tasks", "dropped"))
        if not is_int(generation) or generation < 1:
            raise StoreError(f"invalid Hopfield generation {generation!r}")
        for name, value in (("tasks", tasks), ("dropped", dropped)):
            if (
                not isinstance(value, list)
                or not all(is_int(t) and 0 <= t < task_count for t in value)
                or len(set(value)) != len(value)
            ):
                raise StoreError(
                    f"invalid Hopfield '{name}': must be distinct committed task indices"
                )
        if not tasks or not set(dropped) <= set(tasks):
            raise StoreError("invalid Hopfield block: no tasks, or a dropped task not encoded")
        digest = attrs.get("sha256")
        if not isinstance(digest, str) or not SHA256_PATTERN.fullmatch(digest):
            raise StoreError("invalid Hopfield 'sha256': not 64 lowercase hex digits")
        return cls(generation, tuple(tasks), tuple(dropped), digest)


def hopfield_checksum(psi: np.ndarray, pattern_sum: np.ndarray) -> str:
    """sha256 of Psi's little-endian float32 bytes followed by the pattern sum's int32 bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(psi, dtype="<f4").tobytes())
    digest.update(np.ascontiguousarray(pattern_sum, dtype="<i4").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class PackedState:
    """The header's `packed` block: mask rows entropy-coded by a codec of pack.py, in the rows of
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
    def from_attrs(cls, attrs: Any, version: int, net: NetConfig, row_count: int) -> PackedState:
        """Parse and check the block (reader rule R12) before the `packed` array is read."""
        if not isinstance(attrs, dict):
            raise StoreError("invalid 'packed' block: not an object")
        name = attrs.get("codec")
        if name not in pack.CODECS:
            raise StoreError(
                f"masks are packed with codec {name!r}, which this supsup does not know "
                f"(known: {', '.join(pack.CODECS)}); upgrade supsup"
            )
        raw = attrs.get("raw")
        if raw not in ("kept", "dropped") or (raw == "dropped") != (version >= PACKED_VERSION):
            raise StoreError(
                f"invalid 'packed' block: raw {raw!r} with format version {version} "
                f"(raw masks are dropped exactly in version {PACKED_VERSION})"
            )
        rows, width = attrs.get("rows"), attrs.get("width")
        if not is_int(rows) or not 0 <= rows <= row_count:
            raise StoreError(f"invalid 'packed' rows {rows!r} (must be in [0, {row_count}])")
        sites = [math.prod(shape) for shape in net.mask_shapes]
        widest = BLOB_LENGTH_BYTES + pack.get_codec(name).max_blob_bytes(sites)
        if not is_int(width) or not BLOB_LENGTH_BYTES <= width <= widest:
            raise StoreError(f"invalid 'packed' width {width!r} (must be in [4, {widest}])")
        return cls(name, rows, width, raw == "dropped")


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
    slots: tuple[str, str] | None = None  # sha256 of the current mask_counts, score_sum rows
    row_chunk: int = 1  # rows per chunk of masks, records and task_stats (1 before it existed)

    @property
    def commit_count(self) -> int:
        """Commits that changed masks: task_count in version 1, where every one appended."""
        return self.task_count if self.version == 1 else self.revision

    @property
    def slot(self) -> int:
        """The current row of the double-buffered arrays (mask_counts, score_sum, task_rows)."""
        return self.commit_count % 2

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
                },
                "task_count": self.task_count,
            }
            | ({} if self.hopfield is None else {"hopfield": self.hopfield.to_attrs()})
            | ({} if self.version == 1 else {"revision": self.revision, "rows": self.rows})
            | ({"log_count": self.log_count} if self.log_count else {})
            | ({"row_chunk": self.row_chunk} if self.row_chunk != 1 else {})
            | ({} if self.packed is None else {"packed": self.packed.to_attrs()})
            | (
                {}
                if self.slots is None
                else {"slots": dict(zip(SLOT_ARRAYS, self.slots, strict=True))}
            )
        )

    @classmethod
    def from_attrs(cls, attrs: Any) -> StoreHeader:
        """Parse and check the attributes in the order the spec lists (reader rules R2-R6)."""
        if not isinstance(attrs, dict) or attrs.get("format") != FORMAT_NAME:
            raise StoreError(
                "not a supsup store (no 'supsup' attributes with format 'supsup-store')"
            )
        version = attrs.get("version")
        if not is_int(version) or version < 1:
            raise StoreError(f"invalid format version {version!r}")
        if version > FORMAT_VERSION:
            raise StoreError(
                f"store format version {version} is newer than this supsup reads "
                f"({FORMAT_VERSION});"
                " upgrade supsup"
            )
        network, generator, mask = (attrs.get(k) for k in ("network", "generator", "mask"))
        if not all(isinstance(part, dict) for part in (network, generator, mask)):
            raise StoreError("store attributes lack the 'network', 'generator' or 'mask' objects")
        if generator.get("name") != GENERATOR_NAME:
            raise StoreError(f"unknown weight generator {generator.get('name')!r}")
        try:
            net = NetConfig(
                arch=network.get("arch"),
                outputs=network.get("outputs"),
                seed=generator.get("seed"),
                inputs=network.get("inputs"),
            )
            check_rule(mask.get("rule"), mask.get("density"))
        except (ConfigError, TypeError) as error:
            raise StoreError(f"invalid store attributes: {error}") from error
        density = mask.get("density")
        if mask["rule"] == "sign" and density is not None:
            raise StoreError("invalid store attributes: the sign rule has no density")
        if mask.get("bits") != net.mask_bits or mask.get("bytes") != packed_bytes(net.mask_bits):
            raise StoreError(
                f"mask size {mask.get('bits')} bits does not match network {net.arch} "
                f"with {net.outputs} outputs ({net.mask_bits} bits)"
            )
        count = attrs.get("task_count")
        if not is_int(count) or not 0 <= count <= MAX_TASKS:
            raise StoreError(f"invalid task_count {count!r} (must be in [0, {MAX_TASKS}])")
        hopfield = attrs.get("hopfield")
        if hopfield is not None:
            hopfield = HopfieldState.from_attrs(hopfield, net.mask_bits, count)
        revision, rows = count, count
        if version >= ROW_MAP_VERSION:
            revision, rows = attrs.get("revision"), attrs.get("rows")
            if not is_int(revision) or not count <= revision <= MAX_REVISION:
                raise StoreError(f"invalid revision {revision!r} (must be in [task_count, 2^53])")
            if not is_int(rows) or not count <= rows <= count + 1:
                raise StoreError(f"invalid rows {rows!r} (must be task_count or task_count + 1)")
        log_count = attrs.get("log_count", 0)
        if not is_int(log_count) or not 0 <= log_count <= MAX_LOG_ROWS:
            raise StoreError(f"invalid log_count {log_count!r} (must be in [0, {MAX_LOG_ROWS}])")
        row_chunk = attrs.get("row_chunk", 1)
        widest = max(packed_bytes(net.mask_bits), RECORD_BYTES, 4 * net.stats_size)
        most = max(1, min(MAX_ROW_CHUNK, MAX_ROW_CHUNK_BYTES // widest))
        if not is_int(row_chunk) or not 1 <= row_chunk <= most:
            raise StoreError(
                f"invalid row_chunk {row_chunk!r} (must be in [1, {most}] for this network)"
            )
        packed = attrs.get("packed")
        if packed is not None or version >= PACKED_VERSION:
            packed = PackedState.from_attrs(packed, version, net, rows)
        return cls(
            net,
            mask["rule"],
            None if density is None else float(density),
            count,
            hopfield,
            version,
            revision,
            rows,
            log_count,
            packed,
            slots=_parse_slots(attrs.get("slots")),
            row_chunk=row_chunk,
        )


def _parse_slots(slots: Any) -> tuple[str, str] | None:
    """The header's `slots` (optional: stores written before it have none; checked when there)."""
    if slots is None:
        return None
    if not isinstance(slots, dict) or not all(
        isinstance(slots.get(name), str) and SHA256_PATTERN.fullmatch(slots[name])
        for name in SLOT_ARRAYS
    ):
        raise StoreError("invalid 'slots': must give the sha256 of mask_counts and score_sum")
    return slots["mask_counts"], slots["score_sum"]


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
        """Parse one record row and check it against the header (reader rule R8)."""
        return cls.decode_rows(row[None], [index], header)[0]

    @classmethod
    def decode_rows(
        cls, rows: np.ndarray, indices: Sequence[int], header: StoreHeader
    ) -> list[TaskRecord]:
        """Parse record rows (n, RECORD_BYTES) of the given tasks (reader rule R8). The zero
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
        if not isinstance(data, dict):
            raise StoreError(f"task {index}: record is not a JSON object")
        problems = []
        if data.get("index") != index:
            problems.append(f"index {data.get('index')!r} != row {index}")
        for key in ("data", "created"):  # shown on terminals: printable text only
            text = data.get(key, "")
            if not isinstance(text, str) or len(text) > MAX_RECORD_TEXT or not text.isprintable():
                problems.append(f"'{key}' is not printable text of at most {MAX_RECORD_TEXT}")
        if not isinstance(data.get("train", {}), dict):
            problems.append("'train' is not an object")
        seconds = data.get("seconds")
        if seconds is not None and (not is_number(seconds) or not seconds >= 0):
            problems.append(f"'seconds' {seconds!r} is not a non-negative number")
        density = data.get("density")
        if density is not None and (not is_number(density) or not 0 < density <= 1):
            problems.append(f"'density' {density!r} is not in (0, 1]")
        classes = data.get("classes")
        if (
            not isinstance(classes, list)
            or not classes
            or not all(is_int(c) for c in classes)
            or not 0 <= min(classes) <= max(classes) < header.net.outputs
        ):
            problems.append(f"'classes' must be a non-empty list of outputs < {header.net.outputs}")
        if data.get("rule") not in MASK_RULES:
            problems.append(f"unknown rule {data.get('rule')!r}")
        if not isinstance(data.get("sha256"), str) or not SHA256_PATTERN.fullmatch(data["sha256"]):
            problems.append("'sha256' is not 64 lowercase hex digits")
        accuracy = data.get("accuracy")
        if accuracy is not None and not (is_number(accuracy) and 0 <= accuracy <= 1):
            problems.append(f"'accuracy' {accuracy!r} is not in [0, 1]")
        if not is_int(data.get("revision", 0)) or data.get("revision", 0) < 0:
            problems.append("'revision' is not a non-negative integer")
        if problems:
            raise StoreError(f"task {index}: invalid record: {'; '.join(problems)}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["classes"] = tuple(classes)
        return cls(**known)


def mask_checksum(packed: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(packed, dtype=np.uint8)).hexdigest()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
