"""The mask store: every byte on disk (layout and rules in formats/supsup-store-v1.md).

A Zarr v3 group holding the network config and the seed (never weights), one bit-packed mask per
task, a JSON record per task, and double-buffered per-weight mask counts and score sums. Appends
write rows past the committed count, then bump the count: readers never see half a task.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import zarr
from filelock import FileLock, Timeout

from .bits import pack_mask, packed_bytes, padding_is_zero, unpack_mask
from .errors import ConfigError, StoreError, StoreMismatchError, SupsupError
from .nets import NetConfig
from .supermask import MASK_RULES, check_rule
from .weights import GENERATOR_NAME

FORMAT_NAME: Final = "supsup-store"
FORMAT_VERSION: Final = 1
ATTRIBUTE_KEY: Final = "supsup"
CREATING_KEY: Final = "supsup_creating"
MAX_TASKS: Final = 1_000_000
RECORD_BYTES: Final = 4096
LOCK_NAME: Final = ".supsup.lock"
LOCK_TIMEOUT_SECONDS: Final = float(os.environ.get("SUPSUP_LOCK_TIMEOUT", "600"))
SHA256_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
MAX_HOPFIELD_BITS: Final = 16_384  # d x d float32 energy: 1 GiB at this limit
HOPFIELD_RULE: Final = "storkey-v1"
HOPFIELD_GROUP: Final = "hopfield"


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
        if not _is_int(generation) or generation < 1:
            raise StoreError(f"invalid Hopfield generation {generation!r}")
        for name, value in (("tasks", tasks), ("dropped", dropped)):
            if (
                not isinstance(value, list)
                or not all(_is_int(t) and 0 <= t < task_count for t in value)
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
class StoreHeader:
    """The `supsup` attributes of the group: what the store was made with, and the commit count."""

    net: NetConfig
    mask_rule: str
    density: float | None
    task_count: int = 0
    hopfield: HopfieldState | None = None

    @property
    def mask_bits(self) -> int:
        return self.net.mask_bits

    @property
    def mask_bytes(self) -> int:
        return packed_bytes(self.net.mask_bits)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "network": {k: v for k, v in self.net.to_dict().items() if k != "seed"},
            "generator": {"name": GENERATOR_NAME, "seed": self.net.seed},
            "mask": {
                "rule": self.mask_rule,
                "density": self.density,
                "bits": self.mask_bits,
                "bytes": self.mask_bytes,
            },
            "task_count": self.task_count,
        } | ({} if self.hopfield is None else {"hopfield": self.hopfield.to_attrs()})

    @classmethod
    def from_attrs(cls, attrs: Any) -> StoreHeader:
        """Parse and check the attributes in the order the spec lists (reader rules R2-R6)."""
        if not isinstance(attrs, dict) or attrs.get("format") != FORMAT_NAME:
            raise StoreError(
                "not a supsup store (no 'supsup' attributes with format 'supsup-store')"
            )
        version = attrs.get("version")
        if not _is_int(version) or version < 1:
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
        if not _is_int(count) or not 0 <= count <= MAX_TASKS:
            raise StoreError(f"invalid task_count {count!r} (must be in [0, {MAX_TASKS}])")
        hopfield = attrs.get("hopfield")
        if hopfield is not None:
            hopfield = HopfieldState.from_attrs(hopfield, net.mask_bits, count)
        return cls(net, mask["rule"], None if density is None else float(density), count, hopfield)


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
        """Parse a record row and check it against the header (reader rule R8)."""
        raw = bytes(row).rstrip(b"\0")
        try:
            data = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StoreError(f"task {index}: record is not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise StoreError(f"task {index}: record is not a JSON object")
        problems = []
        if data.get("index") != index:
            problems.append(f"index {data.get('index')!r} != row {index}")
        if not isinstance(data.get("data"), str):
            problems.append("'data' is not a string")
        classes = data.get("classes")
        if (
            not isinstance(classes, list)
            or not classes
            or not all(_is_int(c) and 0 <= c < header.net.outputs for c in classes)
        ):
            problems.append(f"'classes' must be a non-empty list of outputs < {header.net.outputs}")
        if data.get("rule") not in MASK_RULES:
            problems.append(f"unknown rule {data.get('rule')!r}")
        if not isinstance(data.get("sha256"), str) or not SHA256_PATTERN.fullmatch(data["sha256"]):
            problems.append("'sha256' is not 64 lowercase hex digits")
        accuracy = data.get("accuracy")
        if accuracy is not None and not (isinstance(accuracy, int | float) and 0 <= accuracy <= 1):
            problems.append(f"'accuracy' {accuracy!r} is not in [0, 1]")
        if not _is_int(data.get("revision", 0)) or data.get("revision", 0) < 0:
            problems.append("'revision' is not a non-negative integer")
        if problems:
            raise StoreError(f"task {index}: invalid record: {'; '.join(problems)}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["classes"] = tuple(classes)
        return cls(**known)


def mask_checksum(packed: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(packed, dtype=np.uint8).tobytes()).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _zarr_store(path: str, writable: bool) -> zarr.storage.LocalStore:
    return zarr.storage.LocalStore(path, read_only=not writable)


@contextmanager
def _write_lock(path: str) -> Iterator[None]:
    """Exclusive writer lock (fcntl: released by the kernel if the holder dies, never stale)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    lock = FileLock(os.path.join(path, LOCK_NAME), timeout=LOCK_TIMEOUT_SECONDS)
    try:
        with lock:
            yield
    except Timeout as error:
        raise StoreError(
            f"{path}: another writer has held the lock for {LOCK_TIMEOUT_SECONDS:.0f} s "
            "(set SUPSUP_LOCK_TIMEOUT to wait longer)"
        ) from error


class MaskStore:
    """An opened store: its header, task records, masks and per-weight statistics."""

    def __init__(self, path: str, group: zarr.Group, header: StoreHeader) -> None:
        self.path = path
        self._group = group
        self.header = header
        self._arrays = _checked_arrays(group, header)

    # -- opening and creating -------------------------------------------------------------
    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether a fully created store is at `path` (creation commits its attributes last)."""
        try:
            group = zarr.open_group(_zarr_store(str(path), writable=False), mode="r")
        except Exception:
            return False
        return ATTRIBUTE_KEY in group.attrs

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> MaskStore:
        """Open and check a store; any problem is one StoreError naming the path."""
        path = str(path)
        if not Path(path).exists():
            raise StoreError(f"{path}: no such store")
        try:
            group = zarr.open_group(_zarr_store(path, writable), mode="r+" if writable else "r")
        except SupsupError:
            raise
        except Exception as error:
            raise StoreError(
                f"{path}: not a readable Zarr v3 group ({_one_line(error)})"
            ) from error
        if not isinstance(group, zarr.Group):
            raise StoreError(f"{path}: not a Zarr group")
        try:
            header = StoreHeader.from_attrs(group.attrs.get(ATTRIBUTE_KEY))
            return cls(path, group, header)
        except StoreError as error:
            raise StoreError(f"{path}: {error}") from error

    @classmethod
    def create(
        cls, path: str | Path, net: NetConfig, rule: str, density: float | None
    ) -> MaskStore:
        """Create an empty store; refuses to overwrite an existing one."""
        path = str(path)
        check_rule(rule, density)
        if rule == "sign":
            density = None
        header = StoreHeader(net, rule, density, 0)
        if Path(path).exists() and not Path(path).is_dir():
            raise StoreError(f"{path}: exists and is not a directory")
        try:
            with _write_lock(path):
                if cls.exists(path):
                    raise StoreError(f"{path}: a store already exists here")
                _clear_interrupted_creation(path)
                _initialise(path, header)
        except PermissionError as error:
            raise StoreError(f"{path}: cannot write here ({error.strerror})") from error
        return cls.open(path, writable=True)

    # -- reading ------------------------------------------------------------------------------
    @property
    def task_count(self) -> int:
        return self.header.task_count

    @property
    def net(self) -> NetConfig:
        return self.header.net

    def tasks(self) -> list[TaskRecord]:
        """All committed task records, in order."""
        rows = self._arrays["records"][: self.task_count]
        return [TaskRecord.decode(row, i, self.header) for i, row in enumerate(rows)]

    def task(self, index: int) -> TaskRecord:
        self._check_index(index)
        return TaskRecord.decode(self._arrays["records"][index], index, self.header)

    def read_packed(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Packed masks (n, ceil(D/8)) of the given tasks (all by default), checksums checked."""
        indices = list(range(self.task_count)) if indices is None else list(indices)
        for index in indices:
            self._check_index(index)
        dropped = sorted(set(indices) & set(self.dropped_tasks()))
        if dropped:
            raise StoreError(
                f"{self.path}: the masks of task(s) {dropped} were dropped by "
                "`hopfield-encode --drop-masks`; only Hopfield recovery can use them"
            )
        records = self.tasks()
        if indices == list(range(len(indices))):
            packed = self._arrays["masks"][: len(indices)]
        else:
            packed = (
                np.stack([self._arrays["masks"][i] for i in indices])
                if indices
                else (np.zeros((0, self.header.mask_bytes), dtype=np.uint8))
            )
        for row, index in zip(packed, indices, strict=True):
            if mask_checksum(row) != records[index].sha256:
                raise StoreError(f"{self.path}: task {index}: mask bytes do not match their sha256")
        return packed

    def read_mask(self, index: int) -> np.ndarray:
        """One task's mask as flat bool bits (D,), checksum checked."""
        return unpack_mask(self.read_packed([index])[0], self.header.mask_bits)

    def mask_counts(self) -> np.ndarray:
        """uint32 (D,): how many committed tasks keep each weight (the mean mask times k)."""
        return self._arrays["mask_counts"][self.task_count % 2]

    def score_mean(self) -> torch.Tensor | None:
        """Mean raw scores of the committed tasks (for --transfer); None for an empty store."""
        if self.task_count == 0:
            return None
        total = self._arrays["score_sum"][self.task_count % 2]
        return torch.from_numpy(total / np.float32(self.task_count))

    def stored_bytes(self) -> int:
        """Bytes of all files of the store on disk."""
        return sum(p.stat().st_size for p in Path(self.path).rglob("*") if p.is_file())

    def verify(self) -> list[str]:
        """Full check (reader rule R9): records, checksums, padding bits, counts. [] if sound."""
        problems: list[str] = []
        total = np.zeros(self.header.mask_bits, dtype=np.uint64)
        hopfield = self.header.hopfield
        encoded_kept = np.zeros(self.header.mask_bits, dtype=np.int64)
        for index in range(self.task_count):
            try:
                record = self.task(index)
            except StoreError as error:
                problems.append(str(error))
                continue
            if index in self.dropped_tasks():  # no mask bytes to check; R10 accounts for them
                continue
            packed = self._arrays["masks"][index]
            if mask_checksum(packed) != record.sha256:
                problems.append(f"task {index}: mask bytes do not match their sha256")
                continue
            if not padding_is_zero(packed, self.header.mask_bits):
                problems.append(f"task {index}: padding bits of the last mask byte are not zero")
            bits = unpack_mask(packed, self.header.mask_bits)
            total += bits
            if hopfield is not None and index in hopfield.tasks:
                encoded_kept += bits
        if hopfield is not None:
            dropped_bits = self._verify_hopfield(encoded_kept, problems)
            total += dropped_bits.astype(np.uint64)
        if "task_stats" in self._arrays:
            stats = self._arrays["task_stats"][: self.task_count]
            if not np.all(np.isfinite(stats)):
                problems.append("task_stats holds non-finite values")
        if not problems and not np.array_equal(total, self.mask_counts()):
            problems.append("mask_counts disagree with the sum of the committed masks")
        if not np.all(np.isfinite(self._arrays["score_sum"][self.task_count % 2])):
            problems.append("score_sum holds non-finite values")
        return problems

    # -- per-task statistics and the Hopfield energy (hopfield.py computes, this keeps bytes) ---
    def read_task_stats(self, index: int) -> torch.Tensor:
        """One task's BatchNorm statistics, float32 (stats_size,), for nets that keep them."""
        self._check_index(index)
        if "task_stats" not in self._arrays:
            raise StoreError(f"{self.path}: {self.net.arch} keeps no per-task statistics")
        row = self._arrays["task_stats"][index]
        if not np.all(np.isfinite(row)):
            raise StoreError(f"{self.path}: task {index}: statistics hold non-finite values")
        return torch.from_numpy(np.ascontiguousarray(row, dtype=np.float32))

    def dropped_tasks(self) -> tuple[int, ...]:
        """Tasks whose mask rows were dropped after Hopfield encoding (only Psi holds them)."""
        return () if self.header.hopfield is None else self.header.hopfield.dropped

    def read_hopfield(self) -> tuple[np.ndarray, np.ndarray]:
        """Psi float32 (d, d) and the sum of the encoded +-1 patterns int32 (d,), checksummed."""
        state = self.header.hopfield
        if state is None:
            raise StoreError(f"{self.path}: no task is Hopfield-encoded (run hopfield-encode)")
        psi, pattern_sum = (array[...] for array in self._hopfield_arrays(state))
        if hopfield_checksum(psi, pattern_sum) != state.sha256:
            raise StoreError(f"{self.path}: the Hopfield matrix does not match its sha256")
        return psi, pattern_sum

    def commit_hopfield(
        self,
        psi: np.ndarray,
        pattern_sum: np.ndarray,
        tasks: Sequence[int],
        based_on: int,
    ) -> HopfieldState:
        """Write Psi as a new generation aside, then commit the header pointing at it.

        `based_on` is the generation the caller updated (0: none); if another writer committed
        since, nothing is written and the caller must start again from the new Psi.
        """
        d = self.header.mask_bits
        psi = np.ascontiguousarray(psi, dtype=np.float32)
        pattern_sum = np.ascontiguousarray(pattern_sum, dtype=np.int32)
        if psi.shape != (d, d) or pattern_sum.shape != (d,):
            raise StoreMismatchError(f"Psi must be ({d}, {d}) and the pattern sum ({d},)")
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)
            current = fresh.header.hopfield
            if (0 if current is None else current.generation) != based_on:
                raise StoreError(
                    f"{self.path}: another writer changed the Hopfield matrix meanwhile; run again"
                )
            state = HopfieldState(
                based_on + 1,
                tuple(int(t) for t in tasks),
                () if current is None else current.dropped,
                hopfield_checksum(psi, pattern_sum),
            )
            HopfieldState.from_attrs(state.to_attrs(), d, fresh.task_count)  # same checks as R10
            root = fresh._hopfield_root()
            for stale in [name for name in root.group_keys() if name != f"g{based_on}"]:
                del root[stale]  # left by a writer killed before its commit
            generation = root.create_group(f"g{state.generation}")
            generation.create_array(
                "psi", shape=(d, d), chunks=(d, d), dtype="float32", compressors=None
            )[...] = psi
            generation.create_array(
                "pattern_sum", shape=(d,), chunks=(d,), dtype="int32", compressors=None
            )[...] = pattern_sum
            fresh._commit_header(replace(fresh.header, hopfield=state))
            if f"g{based_on}" in root.group_keys():
                del root[f"g{based_on}"]
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        return state

    def drop_masks(self, tasks: Sequence[int]) -> HopfieldState:
        """Mark encoded tasks' masks dropped (the commit), then clear their mask rows."""
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)
            current = fresh.header.hopfield
            missing = sorted(set(tasks) - set(() if current is None else current.tasks))
            if current is None or missing:
                raise StoreError(
                    f"{self.path}: only Hopfield-encoded tasks can drop their masks"
                    + (f" (not encoded: {missing})" if missing else "")
                )
            added = tuple(t for t in current.tasks if t in set(tasks) - set(current.dropped))
            state = replace(current, dropped=current.dropped + added)
            fresh._commit_header(replace(fresh.header, hopfield=state))
            empty = np.zeros(fresh.header.mask_bytes, dtype=np.uint8)
            for index in state.dropped:  # also finishes a drop interrupted after its commit
                fresh._arrays["masks"][index] = empty  # equals the fill value: the chunk is removed
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        return state

    def _hopfield_root(self) -> zarr.Group:
        if HOPFIELD_GROUP not in self._group:
            return self._group.create_group(HOPFIELD_GROUP)
        return self._group[HOPFIELD_GROUP]

    def _hopfield_arrays(self, state: HopfieldState) -> tuple[zarr.Array, zarr.Array]:
        """Reader rule R11: Psi and the pattern sum of the committed generation, shapes checked."""
        d, name = self.header.mask_bits, f"{HOPFIELD_GROUP}/g{state.generation}"
        expected = {"psi": ("float32", (d, d)), "pattern_sum": ("int32", (d,))}
        arrays = []
        for key, (dtype, shape) in expected.items():
            try:
                array = self._group[f"{name}/{key}"]
            except Exception as error:
                raise StoreError(
                    f"{self.path}: Hopfield array '{name}/{key}' is missing ({_one_line(error)})"
                ) from error
            if (
                not isinstance(array, zarr.Array)
                or str(array.dtype) != dtype
                or array.shape != shape
                or tuple(array.chunks) != shape
            ):
                raise StoreError(
                    f"{self.path}: Hopfield array '{name}/{key}' must be {dtype} {shape}, one chunk"
                )
            arrays.append(array)
        return arrays[0], arrays[1]

    def _verify_hopfield(self, encoded_kept: np.ndarray, problems: list[str]) -> np.ndarray:
        """Check Psi (R10, R11, checksum, finite, symmetric) and the pattern sum; return the
        per-weight count of the dropped masks, which the pattern sum determines."""
        state = self.header.hopfield
        none = np.zeros(self.header.mask_bits, dtype=np.int64)
        try:
            psi, pattern_sum = self.read_hopfield()
        except StoreError as error:
            problems.append(str(error))
            return none
        if not np.all(np.isfinite(psi)) or not np.array_equal(psi, psi.T):
            problems.append("the Hopfield matrix is not finite and symmetric")
        encoded_ones = pattern_sum.astype(np.int64) + len(state.tasks)  # 2 x (ones of the masks)
        if np.any(encoded_ones % 2) or np.any(encoded_ones < 0):
            problems.append("the Hopfield pattern sum is not a sum of +-1 patterns")
            return none
        dropped = encoded_ones // 2 - encoded_kept
        if np.any(dropped < 0) or np.any(dropped > len(state.dropped)):
            problems.append("the Hopfield pattern sum disagrees with the kept masks")
            return none
        return dropped

    # -- writing ------------------------------------------------------------------------------
    def append_task(
        self,
        mask_bits: np.ndarray,
        scores: torch.Tensor,
        *,
        data: str,
        classes: Sequence[int],
        accuracy: float | None,
        train: dict[str, Any],
        created: str,
        seconds: float | None,
        task_stats: torch.Tensor | None = None,
    ) -> TaskRecord:
        """Append one task atomically under the writer lock; returns its record."""
        stats_size = self.header.net.stats_size
        stats = None if task_stats is None else task_stats.detach().float().cpu().numpy().ravel()
        if (0 if stats is None else stats.size) != stats_size:
            raise StoreMismatchError(
                f"{0 if stats is None else stats.size} per-task statistics given; the store's "
                f"network keeps {stats_size}"
            )
        bits = np.asarray(mask_bits, dtype=bool).ravel()
        flat_scores = scores.detach().float().cpu().numpy().ravel()
        if bits.size != self.header.mask_bits or flat_scores.size != self.header.mask_bits:
            raise StoreMismatchError(
                f"mask has {bits.size} bits, the store's network has {self.header.mask_bits}"
            )
        packed = pack_mask(bits)
        with _write_lock(self.path):
            fresh = MaskStore.open(self.path, writable=True)  # another writer may have appended
            index = fresh.task_count
            if index >= MAX_TASKS:
                raise StoreError(f"{self.path}: the store holds the maximum of {MAX_TASKS} tasks")
            record = TaskRecord(
                index=index,
                data=data,
                classes=tuple(int(c) for c in classes),
                rule=fresh.header.mask_rule,
                density=fresh.header.density,
                accuracy=accuracy,
                sha256=mask_checksum(packed),
                train=train,
                created=created,
                seconds=seconds,
            )
            fresh._write_task_rows(index, packed, record, stats)
            arrays = fresh._arrays
            arrays["mask_counts"][(index + 1) % 2] = arrays["mask_counts"][index % 2] + bits
            arrays["score_sum"][(index + 1) % 2] = arrays["score_sum"][index % 2] + flat_scores
            fresh._commit(index + 1)
        self.__dict__.update(MaskStore.open(self.path, writable=True).__dict__)
        return record

    def _write_task_rows(
        self, index: int, packed: np.ndarray, record: TaskRecord, stats: np.ndarray | None = None
    ) -> None:
        for name in ("masks", "records", "task_stats"):
            if name in self._arrays and self._arrays[name].shape[0] <= index:
                self._arrays[name].resize((index + 1, self._arrays[name].shape[1]))
        self._arrays["masks"][index] = packed
        self._arrays["records"][index] = record.encode()
        if stats is not None:
            self._arrays["task_stats"][index] = stats

    def _commit(self, task_count: int) -> None:
        self._commit_header(replace(self.header, task_count=task_count))

    def _commit_header(self, header: StoreHeader) -> None:
        """The one atomic write that makes everything written before it part of the store."""
        self._group.attrs[ATTRIBUTE_KEY] = header.to_attrs()
        self.header = header

    def _check_index(self, index: int) -> None:
        if not _is_int(index) or not 0 <= index < self.task_count:
            raise ConfigError(
                f"task {index} is out of range: the store holds {self.task_count} task(s)"
                + (f" (0..{self.task_count - 1})" if self.task_count else "")
            )

    def check_compatible(
        self,
        arch: str | None = None,
        outputs: int | None = None,
        seed: int | None = None,
        mask_rule: str | None = None,
        density: float | None = None,
    ) -> None:
        """Refuse creation options that contradict the existing store (None means 'not given')."""
        wanted = {
            "arch": arch,
            "outputs": outputs,
            "seed": seed,
            "mask-rule": mask_rule,
            "density": density,
        }
        have = {
            "arch": self.net.arch,
            "outputs": self.net.outputs,
            "seed": self.net.seed,
            "mask-rule": self.header.mask_rule,
            "density": self.header.density,
        }
        for name, value in wanted.items():
            if value is not None and value != have[name]:
                raise StoreMismatchError(
                    f"{self.path}: --{name} {value} contradicts the store, made with --{name} "
                    f"{have[name]} (creation options apply to new stores only)"
                )


def _clear_interrupted_creation(path: str) -> None:
    """Remove what a creator killed mid-way left; refuse a folder that holds anything else."""
    leftovers = [p for p in Path(path).iterdir() if p.name != LOCK_NAME]
    if not leftovers:
        return
    try:
        attrs = zarr.open_group(_zarr_store(path, False), mode="r").attrs.asdict()
    except Exception:
        attrs = {}
    if attrs.get(CREATING_KEY) is not True:
        raise StoreError(f"{path}: the folder is not empty and holds no supsup store")
    for leftover in leftovers:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def _initialise(path: str, header: StoreHeader) -> None:
    """Mark the group as being created, write the arrays, then the header last (the commit)."""
    group = zarr.create_group(_zarr_store(path, True), attributes={CREATING_KEY: True})
    bits, nbytes = header.mask_bits, header.mask_bytes
    group.create_array(
        "masks", shape=(0, nbytes), chunks=(1, nbytes), dtype="uint8", compressors=None
    )
    group.create_array(
        "records", shape=(0, RECORD_BYTES), chunks=(1, RECORD_BYTES), dtype="uint8", fill_value=0
    )
    group.create_array(
        "mask_counts", shape=(2, bits), chunks=(1, bits), dtype="uint32", fill_value=0
    )
    group.create_array(
        "score_sum", shape=(2, bits), chunks=(1, bits), dtype="float32", fill_value=0
    )
    if header.net.stats_size:
        stats = header.net.stats_size
        group.create_array(
            "task_stats", shape=(0, stats), chunks=(1, stats), dtype="float32", fill_value=0
        )
    group.attrs.put({ATTRIBUTE_KEY: header.to_attrs()})


def _checked_arrays(group: zarr.Group, header: StoreHeader) -> dict[str, zarr.Array]:
    """Reader rule R7: every array present with the dtype, shape and chunks the header implies."""
    count, bits, nbytes = header.task_count, header.mask_bits, header.mask_bytes
    expected = {
        "masks": ("uint8", nbytes, (1, nbytes)),
        "records": ("uint8", RECORD_BYTES, (1, RECORD_BYTES)),
        "mask_counts": ("uint32", bits, (1, bits)),
        "score_sum": ("float32", bits, (1, bits)),
    }
    if header.net.stats_size:
        expected["task_stats"] = ("float32", header.net.stats_size, (1, header.net.stats_size))
    arrays = {}
    for name, (dtype, width, chunks) in expected.items():
        try:
            array = group[name]
        except Exception as error:
            raise StoreError(
                f"array '{name}' is missing or unreadable ({_one_line(error)})"
            ) from error
        if not isinstance(array, zarr.Array) or array.ndim != 2:
            raise StoreError(f"'{name}' is not a 2-D array")
        if str(array.dtype) != dtype:
            raise StoreError(f"array '{name}' has dtype {array.dtype}, expected {dtype}")
        rows_needed = 2 if name in ("mask_counts", "score_sum") else count
        if array.shape[1] != width or array.shape[0] < rows_needed:
            raise StoreError(
                f"array '{name}' has shape {array.shape}, "
                f"expected at least ({rows_needed}, {width})"
            )
        if tuple(array.chunks) != chunks:
            raise StoreError(f"array '{name}' has chunks {array.chunks}, expected {chunks}")
        arrays[name] = array
    return arrays


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
