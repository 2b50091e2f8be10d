"""Broken and hostile stores: each `Breakage` damages a copy of a sound store in one way.

`kind` says what every command must then do:
- "broken": refuse it (exit 2, one line on stderr; `verify` exits 1 listing the problem), or, if
  the command never reads the damaged part, answer exactly as it does on the sound store;
- "forged": records that parse but lie (a checksum that does not match): `verify` exits 1, a
  command that uses the lying part refuses, others (`info`) may show the record as stored;
- "sound": the store is still a valid store (the spec lets writers leave these leftovers, or the
  damage is in bytes readers ignore): every command works and `verify` passes.

The stores are made by writing files directly, never through supsup, so they can be anything.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numcodecs import Zstd

CANARY = "EXECUTED"  # a file that appears next to the store if anything in the store was executed


# Every command that reads a store, as argv with "{store}" for its path (JSON where it has it,
# so answers compare exactly). Commands that write come last: they must refuse broken stores or
# leave sound ones sound.
READERS: dict[str, list[str]] = {
    "info": "info {store} --json".split(),
    "info-text": "info {store}".split(),
    "eval": "eval {store} --task 1 --images 100 --quiet --json".split(),
    "infer": "infer {store} --data permuted:2 --trials 1 --batch 32 --quiet --json".split(),
    "masks-overlap": "masks overlap {store} --json".split(),
    "masks-export": "masks export {store} --task 0 --out {store}-0.npz".split(),
    "plot": "plot {store} --out {store}-figures --quiet --json".split(),
    "copy": "copy {store} {store}-copy.zarr --quiet --json".split(),
}
WRITERS: dict[str, list[str]] = {
    "train-task": "train-task {store} --data permuted:4 --batches 2 --quiet --json".split(),
    "allocate": (
        "allocate {store} --data permuted:2 --batches-per-segment 2 --check-every 1 --quiet --json"
    ).split(),
    "masks-merge": "masks merge {store} --tasks 0,1 --rule and --json".split(),
    "pack": "pack {store} --quiet --json".split(),
}


VOLATILE = {
    "created",
    "seconds",
    "stored_bytes",
    "stored_bytes_per_task",
    "command",
    "store",
    "path",
}


def stable(output: str, store: Path) -> Any:
    """A command's answer without what legitimately differs between two copies of a store."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    text = output.replace(str(store), "{store}")
    try:
        return strip(json.loads(text))
    except json.JSONDecodeError:  # text: rich wraps lines by length, so compare the words
        return re.sub(r"[\d,]+ bytes on disk", "", " ".join(text.split()))


@dataclass(frozen=True)
class Breakage:
    name: str
    damage: Callable[[Path], None]
    kind: str = "broken"


def make_hostile(sound: Path, dest: Path, breakage: Breakage) -> Path:
    """Copy the sound store to `dest` and damage the copy."""
    shutil.copytree(sound, dest)
    breakage.damage(dest)
    return dest


# -- helpers ------------------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _header(store: Path) -> dict[str, Any]:
    return _json(store / "zarr.json")["attributes"]["supsup"]


def _set_header(store: Path, change: Callable[[dict[str, Any]], None]) -> None:
    meta = _json(store / "zarr.json")
    change(meta["attributes"]["supsup"])
    (store / "zarr.json").write_text(json.dumps(meta))


def _header_value(*keys: str, value: Any) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        def change(header: dict[str, Any]) -> None:
            target = header
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value

        _set_header(store, change)

    return damage


def _array_meta(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        meta = _json(store / name / "zarr.json")
        change(meta)
        (store / name / "zarr.json").write_text(json.dumps(meta))

    return damage


def _slot(store: Path) -> int:
    return _header(store)["task_count"] % 2


def _chunk(store: Path, array: str, row: int | None = None) -> Path:
    """The chunk file holding one row (the current slot for mask_counts/score_sum, whose chunks
    are one row each; per-task arrays keep `row_chunk` rows per chunk)."""
    if row is None:
        return store / array / "c" / str(_slot(store)) / "0"
    rows = 1 if array in ("mask_counts", "score_sum") else _header(store).get("row_chunk", 1)
    return store / array / "c" / str(row // rows) / "0"


def _truncate(array: str, row: int | None = None) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        chunk = _chunk(store, array, row)
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])

    return damage


def _delete_chunk(array: str, row: int | None = None) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        _chunk(store, array, row).unlink()

    return damage


def _replace_chunk(
    array: str, content: Callable[[], bytes], row: int = 0
) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        _chunk(store, array, row).write_bytes(content())

    return damage


def _edit_row(store: Path, array: str, row: int, edit: Callable[[bytes], bytes]) -> None:
    """Rewrite one row's bytes inside its chunk, re-encoded as zarr wrote it (zstd or raw): the
    damage lands in that row alone, whatever number of rows a chunk holds."""
    chunk = _chunk(store, array, row)
    codecs = [c["name"] for c in _json(store / array / "zarr.json")["codecs"]]
    data = chunk.read_bytes()
    raw = bytearray(Zstd().decode(data) if "zstd" in codecs else data)
    width = (
        len(raw)
        // _json(store / array / "zarr.json")["chunk_grid"]["configuration"]["chunk_shape"][0]
    )
    start = (row % (len(raw) // width)) * width
    raw[start : start + width] = edit(bytes(raw[start : start + width]))
    chunk.write_bytes(Zstd(level=1).encode(bytes(raw)) if "zstd" in codecs else bytes(raw))


def _flip_mask_bit(store: Path) -> None:
    def flip(row: bytes) -> bytes:
        return row[:100] + bytes([row[100] ^ 0x10]) + row[101:]

    _edit_row(store, "masks", 1, flip)


def _record_text(text: bytes, row: int = 0) -> Callable[[Path], None]:
    """Replace one record with these bytes (zero padded to 4,096)."""

    def damage(store: Path) -> None:
        _edit_row(store, "records", row, lambda old: text + b"\0" * (len(old) - len(text)))

    return damage


def _edit_record(change: Callable[[dict[str, Any]], None], row: int = 0) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        def edit(old: bytes) -> bytes:
            record = json.loads(old.rstrip(b"\0"))
            change(record)
            text = json.dumps(record).encode()
            return text + b"\0" * (len(old) - len(text))

        _edit_row(store, "records", row, edit)

    return damage


def _set_item(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda record: record.__setitem__(key, value)


def _rle_frame(decoded: int, declare_size: bool = True) -> bytes:
    """A zstd frame of `decoded` zero bytes written by hand as RLE blocks: 4 bytes per 128 KiB,
    so a 100 KB chunk file can expand to gigabytes (RFC 8878; no memory needed to make it)."""
    if declare_size:  # single segment, 8-byte frame content size
        header = b"\x28\xb5\x2f\xfd\xe0" + decoded.to_bytes(8, "little")
    else:  # no content size; window descriptor 2^20 bytes
        header = b"\x28\xb5\x2f\xfd\x00\x50"
    blocks, left = [], decoded
    while left:
        size = min(left, 128 << 10)
        left -= size
        blocks.append(((size << 3) | (1 << 1) | (left == 0)).to_bytes(3, "little") + b"\0")
    return header + b"".join(blocks)


def _zstd_bomb(decoded: int) -> Callable[[], bytes]:
    return lambda: _rle_frame(decoded)


def _multi_frame_bomb() -> bytes:
    """An honest first frame (the 4,096 bytes of a record row), then one that expands to 3 GB."""
    return Zstd(level=1).encode(b"{}" + b"\0" * 4094) + _rle_frame(3 * 10**9)


def _sparse_chunk(store: Path) -> None:
    chunk = _chunk(store, "masks", 0)
    with chunk.open("r+b") as handle:
        handle.truncate(10**10)  # 10 GB that take no disk: a reader must not try to hold them


def _symlink_chunk(target: str) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        chunk = _chunk(store, "masks", 0)
        chunk.unlink()
        chunk.symlink_to(target)

    return damage


def _fifo_chunk(store: Path) -> None:
    chunk = _chunk(store, "masks", 0)
    chunk.unlink()
    os.mkfifo(chunk)


class _Executes:
    """Unpickling this creates the canary file: proof that the store's bytes were executed."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.canary,))


def _zarr_v2_with_pickle(store: Path) -> None:
    """The same store in Zarr v2 layout, its records decoded by numcodecs' pickle filter."""
    attrs = _json(store / "zarr.json")["attributes"]
    for entry in list(store.iterdir()):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    (store / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / ".zattrs").write_text(json.dumps(attrs))
    width = attrs["supsup"]["mask"]["bytes"]
    bits = attrs["supsup"]["mask"]["bits"]
    layout = {
        "masks": ("|u1", width),
        "records": ("|O", 4096),
        "mask_counts": ("<u4", bits),
        "score_sum": ("<f4", bits),
    }
    for name, (dtype, columns) in layout.items():
        (store / name).mkdir()
        meta = {
            "zarr_format": 2,
            "shape": [3, columns],
            "chunks": [1, columns],
            "dtype": dtype,
            "compressor": None,
            "fill_value": 0,
            "filters": [{"id": "pickle"}] if name == "records" else None,
            "order": "C",
        }
        (store / name / ".zarray").write_text(json.dumps(meta))
    for row in range(3):
        (store / "records" / f"{row}.0").write_bytes(pickle.dumps(_Executes(store.parent / CANARY)))


def _pickle_codec(store: Path) -> None:
    """A v3 array naming a pickle codec, with a chunk that would run code if unpickled."""

    def change(meta: dict[str, Any]) -> None:
        meta["codecs"] = [{"name": "bytes"}, {"name": "numcodecs.pickle"}]

    _array_meta("records", change)(store)
    _chunk(store, "records", 0).write_bytes(pickle.dumps(_Executes(store.parent / CANARY)))


def _codecs(name: str, codecs: list[dict[str, Any]]) -> Callable[[Path], None]:
    return _array_meta(name, lambda meta: meta.__setitem__("codecs", codecs))


def _deep_json(store: Path) -> None:
    meta = (store / "zarr.json").read_text()
    (store / "zarr.json").write_text(meta[:-1] + ', "deep": ' + "[" * 50_000 + "]" * 50_000 + "}")


def _huge_json(store: Path) -> None:
    (store / "zarr.json").write_text(" " * (2 << 20) + (store / "zarr.json").read_text())


def _partial_leftovers(store: Path) -> None:
    # What zarr's LocalStore leaves when its writer is killed between writing aside and renaming,
    # and the marker of a writer that never finished.
    (store / "zarr.0123456789abcdef.partial").write_text('{"zarr_format": 3, "trunc')
    (store / ".supsup.writing").touch()
    (store / "masks" / "c" / "3").mkdir()
    (store / "masks" / "c" / "3" / "0.fedcba9876543210.partial").write_bytes(b"\1" * 10)


def _rows_past_count(store: Path) -> None:
    """Garbage in rows past task_count: a killed appender's leftovers, ignored by readers."""
    for name in ("masks", "records"):
        meta = _json(store / name / "zarr.json")
        meta["shape"][0] = 5
        (store / name / "zarr.json").write_text(json.dumps(meta))
        (store / name / "c" / "4").mkdir(parents=True, exist_ok=True)
        (store / name / "c" / "4" / "0").write_bytes(b"garbage")


def _terabyte_rows(store: Path) -> None:
    """Array shapes claiming 10^12 rows (zarr's row selections allocate per row chunk)."""
    for name in ("masks", "records"):
        _array_meta(name, lambda meta: meta["shape"].__setitem__(0, 10**12))(store)


BREAKAGES: tuple[Breakage, ...] = (
    # group metadata and the header
    Breakage("group-json-not-json", lambda s: (s / "zarr.json").write_text("{not json")),
    Breakage(
        "group-json-truncated",
        lambda s: (s / "zarr.json").write_text((s / "zarr.json").read_text()[:200]),
    ),
    Breakage("group-json-deeply-nested", _deep_json),
    Breakage("group-json-over-limit", _huge_json),
    Breakage("group-json-missing", lambda s: (s / "zarr.json").unlink()),
    Breakage(
        "header-missing",
        lambda s: (s / "zarr.json").write_text(
            json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
        ),
    ),
    Breakage("header-not-object", _header_value("mask", value="topk")),
    Breakage("version-from-future", _header_value("version", value=99)),
    Breakage("version-bool", _header_value("version", value=True)),
    Breakage("format-other", _header_value("format", value="other-store")),
    Breakage("generator-unknown", _header_value("generator", "name", value="mt19937")),
    Breakage("seed-negative", _header_value("generator", "seed", value=-1)),
    Breakage("seed-huge", _header_value("generator", "seed", value=2**80)),
    Breakage("seed-float", _header_value("generator", "seed", value=0.5)),
    Breakage("arch-unknown", _header_value("network", "arch", value="resnet1000")),
    Breakage("arch-list", _header_value("network", "arch", value=["lenet-300-100"])),
    Breakage("outputs-terabyte-network", _header_value("network", "outputs", value=10**12)),
    Breakage("outputs-bool", _header_value("network", "outputs", value=True)),
    Breakage("inputs-other", _header_value("network", "inputs", value=1024)),
    Breakage("rule-unknown", _header_value("mask", "rule", value="random")),
    Breakage("density-nan", _header_value("mask", "density", value=float("nan"))),
    Breakage("density-above-one", _header_value("mask", "density", value=1.5)),
    Breakage("bits-disagree-with-network", _header_value("mask", "bits", value=266_201)),
    Breakage("bytes-terabytes", _header_value("mask", "bytes", value=10**12)),
    Breakage("count-beyond-arrays", _header_value("task_count", value=7)),
    Breakage("count-negative", _header_value("task_count", value=-1)),
    Breakage("count-over-limit", _header_value("task_count", value=10**7)),
    Breakage("count-string", _header_value("task_count", value="3")),
    Breakage("zarr-v2-with-pickle", _zarr_v2_with_pickle),
    # array metadata
    Breakage("masks-metadata-missing", lambda s: (s / "masks" / "zarr.json").unlink()),
    Breakage("masks-dtype-wrong", _array_meta("masks", lambda m: m.update(data_type="uint16"))),
    Breakage(
        "counts-dtype-float",
        _array_meta("mask_counts", lambda m: m.update(data_type="float64")),
    ),
    Breakage(
        "masks-width-disagrees",
        _array_meta("masks", lambda m: m["shape"].__setitem__(1, 33_276)),
    ),
    Breakage(
        "counts-width-terabytes",
        _array_meta("mask_counts", lambda m: m["shape"].__setitem__(1, 10**12)),
    ),
    Breakage(
        "chunks-terabytes",
        _array_meta(
            "mask_counts",
            lambda m: m["chunk_grid"]["configuration"].__setitem__("chunk_shape", [1, 10**12]),
        ),
    ),
    Breakage("codec-unknown", _codecs("records", [{"name": "bytes"}, {"name": "no-such-codec"}])),
    Breakage(
        "codec-gzip", _codecs("records", [{"name": "bytes"}, {"name": "gzip", "configuration": {}}])
    ),
    Breakage(
        "codec-big-endian",
        _codecs(
            "mask_counts",
            [{"name": "bytes", "configuration": {"endian": "big"}}, {"name": "zstd"}],
        ),
    ),
    Breakage(
        "codec-sharding",
        _codecs(
            "masks",
            [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": [1, 33_275],
                        "codecs": [{"name": "bytes"}],
                        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                    },
                }
            ],
        ),
    ),
    Breakage("codec-pickle", _pickle_codec),
    # chunks
    Breakage("mask-chunk-missing", _delete_chunk("masks", 1)),
    Breakage("mask-chunk-truncated", _truncate("masks", 0)),
    Breakage("mask-checksum-mismatch", _flip_mask_bit),
    Breakage("mask-chunk-10-gb-sparse", _sparse_chunk),
    Breakage("mask-chunk-devzero", _symlink_chunk("/dev/zero")),
    Breakage("mask-chunk-fifo", _fifo_chunk),
    Breakage("record-chunk-missing", _delete_chunk("records", 2)),
    Breakage("record-chunk-truncated", _truncate("records", 0)),
    Breakage("record-chunk-garbage", _replace_chunk("records", lambda: os.urandom(300))),
    Breakage("record-zstd-bomb", _replace_chunk("records", _zstd_bomb(3 * 10**9))),
    Breakage("record-zstd-multi-frame-bomb", _replace_chunk("records", _multi_frame_bomb)),
    Breakage("record-not-json", _record_text(b"{nope")),
    Breakage("record-deeply-nested", _record_text(b"[" * 2000)),
    Breakage("record-huge-integer", _record_text(b'{"index": ' + b"9" * 4000 + b"}")),
    Breakage("record-sha-mismatch", _edit_record(_set_item("sha256", "0" * 64)), kind="forged"),
    Breakage("record-index-wrong", _edit_record(_set_item("index", 2))),
    Breakage("record-classes-beyond-outputs", _edit_record(_set_item("classes", [0, 10]))),
    Breakage("record-escape-sequence", _edit_record(_set_item("data", "permuted:1\x1b[2J"))),
    Breakage("record-accuracy-string", _edit_record(_set_item("accuracy", "99%"))),
    Breakage("record-train-list", _edit_record(_set_item("train", [1, 2]))),
    Breakage("counts-chunk-missing", _delete_chunk("mask_counts")),
    Breakage("counts-chunk-truncated", _truncate("mask_counts")),
    Breakage("counts-chunk-bomb", _replace_chunk("mask_counts", _zstd_bomb(3 * 10**9), row=1)),
    Breakage(
        "record-zstd-size-undeclared",
        _replace_chunk("records", lambda: _rle_frame(3 * 10**9, declare_size=False)),
    ),
    Breakage("scores-chunk-truncated", _truncate("score_sum")),
    # leftovers the spec allows: still sound stores
    Breakage("leftover-partial-files", _partial_leftovers, kind="sound"),
    Breakage("leftover-rows-past-count", _rows_past_count, kind="sound"),
    Breakage("shape-terabyte-rows", _terabyte_rows),
    Breakage(
        "record-text-with-markup",
        _edit_record(_set_item("created", "[/][bold red]2026")),
        kind="sound",
    ),
)
