"""The mask codecs: lossless on any mask, near H2(density) on sparse ones, strict on bad blobs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_cli.errors import ConfigError, StoreError
from supsup_cli.format import header as store_header
from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.bits import pack_mask
from supsup_cli.format.codecs import (
    AUTO,
    CODECS,
    COUNT_BYTES,
    binary_entropy,
    decode_mask,
    decode_packed,
    encode_mask,
    encode_packed,
    encode_store,
    get_codec,
)
from supsup_cli.store import MaskStore
from supsup_cli.store.layout import ATTRIBUTE_KEY

LENET_SITES = [math.prod(s) for s in NetConfig("lenet-300-100").mask_shapes]


def topk_like(sizes: list[int], density: float, seed: int) -> np.ndarray:
    """Exactly round(density * n) ones per site at random places, like a top-k mask."""
    rng = np.random.default_rng(seed)
    parts = []
    for size in sizes:
        part = np.zeros(size, dtype=bool)
        part[rng.choice(size, max(1, round(density * size)), replace=False)] = True
        parts.append(part)
    return np.concatenate(parts)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    density=st.sampled_from([0.0, 0.001, 0.05, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**32 - 1),
    codec=st.sampled_from(sorted(CODECS)),
)
def test_round_trip_is_lossless(sizes: list[int], density: float, seed: int, codec: str) -> None:
    """Random masks of any density, site sizes not multiples of 8, with and without context."""
    rng = np.random.default_rng(seed)
    d = sum(sizes)
    chosen = get_codec(codec)
    previous = rng.random(d) < 0.3
    bits = rng.random(d) < density
    blob = encode_mask(chosen, bits, sizes, previous)
    assert np.array_equal(decode_mask(chosen, blob, sizes, previous), bits)


@settings(max_examples=25, deadline=None)
@given(
    tasks=st.integers(1, 5),
    sizes=st.lists(st.integers(1, 200), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    codec=st.sampled_from(sorted(CODECS)),
)
def test_packed_rows_round_trip(tasks: int, sizes: list[int], seed: int, codec: str) -> None:
    """Whole stores' worth of packed rows (padding bits included) come back byte for byte."""
    rng = np.random.default_rng(seed)
    rows = np.stack([pack_mask(rng.random(sum(sizes)) < rng.random()) for _ in range(tasks)])
    chosen = get_codec(codec)
    blobs = encode_packed(chosen, rows, sizes)
    assert np.array_equal(decode_packed(chosen, blobs, sizes), rows)
    for wanted in ([tasks - 1], [0], list(range(tasks))[::-1]):
        assert np.array_equal(decode_packed(chosen, blobs, sizes, wanted), rows[wanted])


@pytest.mark.parametrize("density", [0.1, 0.05])
def test_topk_masks_cost_within_one_percent_of_h2(density: float) -> None:
    """The issue's bound is 5%; a per-site model of top-k masks is within a fraction of that."""
    bits = topk_like(LENET_SITES, density, seed=7)
    blob = encode_mask(get_codec("range-site"), bits, LENET_SITES)
    bits_per_weight = 8 * len(blob) / bits.size
    assert bits_per_weight < 1.01 * binary_entropy(density)
    assert bits_per_weight > 0.99 * binary_entropy(density)  # nothing is lost or faked


def test_context_codec_uses_correlation_with_the_previous_mask() -> None:
    previous = topk_like(LENET_SITES, 0.1, seed=1)
    noisy = previous ^ (np.random.default_rng(2).random(previous.size) < 0.01)
    plain = encode_mask(get_codec("range-site"), noisy, LENET_SITES)
    context = encode_mask(get_codec("range-site-prev"), noisy, LENET_SITES, previous)
    assert len(context) < 0.35 * len(plain)


def test_auto_keeps_the_context_codec_only_where_masks_correlate() -> None:
    rng = np.random.default_rng(5)
    independent = [pack_mask(topk_like(LENET_SITES, 0.1, seed)) for seed in range(3)]
    chained = [topk_like(LENET_SITES, 0.1, 0)]
    for _ in range(2):  # each mask a 2% perturbation of the one before, as with --transfer
        chained.append(chained[-1] ^ (rng.random(chained[-1].size) < 0.02))
    codec, blobs = encode_store(AUTO, independent, LENET_SITES)
    assert codec.name == "range-site"
    assert np.array_equal(decode_packed(codec, blobs, LENET_SITES), np.stack(independent))
    codec, blobs = encode_store(AUTO, [pack_mask(b) for b in chained], LENET_SITES)
    assert codec.name == "range-site-prev"
    assert len(blobs[2]) < 0.6 * len(blobs[0])
    seen = []
    encode_store(AUTO, independent, LENET_SITES, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == list(range(1, 7))


def test_constant_sites_cost_only_their_counts() -> None:
    sizes = [100, 37]
    for bits in (np.zeros(137, dtype=bool), np.ones(137, dtype=bool)):
        blob = encode_mask(get_codec("range-site"), bits, sizes)
        assert len(blob) == COUNT_BYTES * len(sizes)
        assert np.array_equal(decode_mask(get_codec("range-site"), blob, sizes), bits)


def test_binary_entropy() -> None:
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.1) == pytest.approx(0.468996, abs=1e-6)
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0


def test_unknown_codec_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="range-site"):
        get_codec("huffman")


def test_hostile_blobs_are_store_errors() -> None:
    codec = get_codec("range-site")
    sizes = [50, 30]
    bits = topk_like(sizes, 0.2, seed=3)
    blob = encode_mask(codec, bits, sizes)
    with pytest.raises(StoreError, match="truncated"):
        decode_mask(codec, blob[:3], sizes)
    with pytest.raises(StoreError, match="truncated or misaligned"):
        decode_mask(codec, blob + b"\0", sizes)
    too_many = np.array([51, 6], dtype="<u4").tobytes() + blob[2 * COUNT_BYTES :]
    with pytest.raises(StoreError, match="claims 51 ones"):
        decode_mask(codec, too_many, sizes)
    with pytest.raises(StoreError, match="left over"):
        decode_mask(codec, blob + b"\x01\x02\x03\x04" * 4, sizes)
    wrong_count = np.array([9, 6], dtype="<u4").tobytes() + blob[2 * COUNT_BYTES :]
    with pytest.raises(StoreError):
        decode_mask(codec, wrong_count, sizes)


# -- golden blobs: the bytes of the format (a change of constriction's coder would show here) ----

GOLDEN_MASK = "8100012000010021200a1810044058040000"  # np.packbits of 137 bits, sites [100, 37]
GOLDEN_BLOB = "0d0000000600000068467febeb3c0f8e9bf7b6e8"  # range-site: counts 13, 6, then words


def test_golden_blob_decodes_and_encodes_byte_for_byte() -> None:
    codec = get_codec("range-site")
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(GOLDEN_MASK), np.uint8), count=137)
    assert np.array_equal(decode_mask(codec, bytes.fromhex(GOLDEN_BLOB), [100, 37]), bits)
    assert encode_mask(codec, bits.astype(bool), [100, 37]).hex() == GOLDEN_BLOB


def test_tasks_without_masks_have_empty_blobs_and_skip_the_context_chain() -> None:
    sizes = [70, 13]
    rng = np.random.default_rng(9)
    rows = [pack_mask(rng.random(83) < 0.3) for _ in range(3)]
    for name in CODECS:
        codec = get_codec(name)
        blobs = encode_packed(codec, [rows[0], None, rows[2]], sizes)
        assert blobs[1] == b""
        assert np.array_equal(
            decode_packed(codec, blobs, sizes, [2, 0]), np.stack([rows[2], rows[0]])
        )
        with pytest.raises(StoreError, match=r"\[1\] have no packed mask"):
            decode_packed(codec, blobs, sizes, [1])


# -- packed stores: in place, --out --drop-raw, transparent reading, hostile headers -------------

NET = NetConfig("lenet-300-100", outputs=3, seed=2)  # D = 265,500: padding bits in the last byte


def make_store(path: Path, count: int = 4, seed: int = 0, version: int = 1) -> MaskStore:
    """A store of random top-k-like masks of varied density (no training); version 1 (the
    older layout) unless asked: these tests follow its versions 1 -> 2 -> 3."""
    store = MaskStore.create(path, NET, "topk", 0.1, version=version)
    sites = [math.prod(s) for s in NET.mask_shapes]
    for index in range(count):
        store.append_task(
            topk_like(sites, [0.1, 0.05, 0.3, 0.5][index % 4], seed + index),
            torch.full((NET.mask_bits,), float(index)),
            data=f"permuted:{index + 1}",
            classes=range(3),
            accuracy=0.5,
            train={},
            created="",
            seconds=None,
        )
    return store


def set_header(path: Path, **changes: object) -> None:
    group = zarr.open_group(str(path), mode="r+")
    header = dict(group.attrs[ATTRIBUTE_KEY])
    for key, value in changes.items():
        if key.startswith("packed_"):
            header["packed"] = dict(header["packed"], **{key[len("packed_") :]: value})
        else:
            header[key] = value
    group.attrs[ATTRIBUTE_KEY] = header


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_pack_in_place_keeps_raw_masks_and_checks_blobs(tmp_path: Path, codec: str) -> None:
    store = make_store(tmp_path / "s.zarr")
    raw = store.read_packed()
    report = store.pack(codec)
    assert report.codec == codec and not report.raw_dropped
    assert [t.task for t in report.tasks] == [0, 1, 2, 3]
    reopened = MaskStore.open(store.path)
    assert reopened.header.version == 1 and reopened.header.packed.codec == codec
    assert np.array_equal(reopened.read_packed(), raw)
    assert reopened.verify() == []
    for size, row in zip(report.tasks, raw, strict=True):
        assert size.kept == int(np.unpackbits(row).sum())
        assert size.bits_per_weight < 1.01 * size.bound + 0.01


def test_drop_raw_store_reads_transparently(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    raw, counts = store.read_packed(), store.mask_counts()
    report = store.pack(out=tmp_path / "small.zarr", drop_raw=True)
    small = MaskStore.open(tmp_path / "small.zarr")
    assert report.raw_dropped and small.header.version == 3 and small.header.packed.dropped
    assert report.stored_bytes == small.stored_bytes() < store.stored_bytes()
    assert np.array_equal(small.read_packed(), raw)
    assert np.array_equal(small.read_packed([3, 1]), raw[[3, 1]])
    assert np.array_equal(small.read_mask(2), np.unpackbits(raw[2], count=NET.mask_bits) == 1)
    assert np.array_equal(small.mask_counts(), counts)
    assert [r.sha256 for r in small.tasks()] == [r.sha256 for r in store.tasks()]
    assert small.verify() == []
    assert MaskStore.open(store.path).header.packed is None  # the source is left as it was


def test_drop_raw_store_takes_new_tasks_and_repacks(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr").pack(out=tmp_path / "small.zarr", drop_raw=True)
    small = MaskStore.open(tmp_path / "small.zarr", writable=True)
    extra = make_store(tmp_path / "other.zarr", count=1, seed=50).read_mask(0)
    small.append_task(
        extra,
        torch.zeros(NET.mask_bits),
        data="permuted:9",
        classes=range(3),
        accuracy=None,
        train={},
        created="",
        seconds=None,
    )
    reopened = MaskStore.open(small.path)
    assert reopened.header.version == 3 and reopened.task_count == 5
    assert np.array_equal(reopened.read_mask(4), extra) and reopened.verify() == []
    report = reopened.pack(out=tmp_path / "again.zarr", drop_raw=True)
    assert len(report.tasks) == 5
    again = MaskStore.open(tmp_path / "again.zarr")
    assert np.array_equal(again.read_packed(), reopened.read_packed()) and again.verify() == []
    restored = reopened.pack(out=tmp_path / "restored.zarr")  # raw rows come back
    assert MaskStore.open(restored.path).header.version == 2
    assert MaskStore.open(restored.path).verify() == []


def test_version_4_stores_stay_version_4_packed_either_way(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", count=2, version=4)
    raw = store.read_packed()
    store.pack()
    small = MaskStore.open(store.pack(out=tmp_path / "small.zarr", drop_raw=True).path)
    restored = MaskStore.open(small.pack(out=tmp_path / "restored.zarr").path)
    for packed in (MaskStore.open(store.path), small, restored):
        assert packed.header.version == 4 and packed.header.slot_arrays == ()
        assert np.array_equal(packed.read_packed(), raw) and packed.verify() == []
    assert small.header.packed.dropped and not restored.header.packed.dropped


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("drop_raw", [True, False])
def test_replaced_tasks_supersede_their_blobs(tmp_path: Path, codec: str, drop_raw: bool) -> None:
    """Replaces write raw rows (the second reuses a packed row); the other tasks still decode."""
    make_store(tmp_path / "s.zarr").pack(codec, out=tmp_path / "p.zarr", drop_raw=drop_raw)
    packed = MaskStore.open(tmp_path / "p.zarr", writable=True)
    expected = packed.read_packed()
    for task in (1, 2):
        new = ~packed.read_mask(task)
        packed.replace_task(
            task, new, torch.zeros(NET.mask_bits), accuracy=None, train={}, seconds=None
        )
        expected[task] = pack_mask(new)
    reopened = MaskStore.open(packed.path)
    assert np.array_equal(reopened.read_packed(), expected)
    assert np.array_equal(reopened.read_packed([3]), expected[[3]])
    assert reopened.verify() == []


def test_readers_without_the_codec_or_the_version_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_store(tmp_path / "s.zarr").pack(out=tmp_path / "small.zarr", drop_raw=True)
    path = tmp_path / "small.zarr"
    monkeypatch.setattr(store_header, "FORMAT_VERSION", 2)  # a reader of versions 1-2 only
    with pytest.raises(StoreError, match="newer than this supsup reads"):
        MaskStore.open(path)
    monkeypatch.undo()
    set_header(path, packed_codec="range-future")
    with pytest.raises(StoreError, match="codec 'range-future', which this supsup does not know"):
        MaskStore.open(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2}, "raw 'dropped' with format version 2"),
        ({"packed_raw": "gone"}, "raw 'gone'"),
        ({"packed_rows": 99}, "invalid 'packed' rows 99"),
        ({"packed_width": 10**9}, "invalid 'packed' width"),
        ({"packed_width": 2}, "invalid 'packed' width"),
        ({"packed_width": 5000}, "array 'packed' has shape"),
        ({"packed": None}, "'packed' block: not an object"),
    ],
)
def test_hostile_packed_headers_are_refused(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    make_store(tmp_path / "s.zarr", count=2).pack(out=tmp_path / "small.zarr", drop_raw=True)
    set_header(tmp_path / "small.zarr", **changes)
    with pytest.raises(StoreError, match=message):
        MaskStore.open(tmp_path / "small.zarr")


def test_corrupt_blobs_are_caught(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr", count=2).pack(out=tmp_path / "small.zarr", drop_raw=True)
    group = zarr.open_group(str(tmp_path / "small.zarr"), mode="r+")
    row = group["packed"][1]
    row[20] ^= 0xFF  # a flipped byte inside the range coder's words
    group["packed"][1] = row
    small = MaskStore.open(tmp_path / "small.zarr")
    source = MaskStore.open(tmp_path / "s.zarr")
    assert np.array_equal(small.read_packed([0]), source.read_packed([0]))
    with pytest.raises(StoreError):
        small.read_packed([1])
    assert any(p.startswith("task 1:") for p in small.verify())
    row[8 + 4 :] = 0
    row[:4] = np.frombuffer((10**6).to_bytes(4, "little"), np.uint8)  # length past the row
    group["packed"][1] = row
    with pytest.raises(StoreError, match="bad length or padding"):
        MaskStore.open(tmp_path / "small.zarr").read_packed([1])


def test_stale_blobs_beside_raw_masks_fail_verify(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", count=2)
    store.pack()
    group = zarr.open_group(store.path, mode="r+")
    group["packed"][0] = group["packed"][1]  # task 0's blob now decodes to task 1's mask
    problems = MaskStore.open(store.path).verify()
    assert problems == ["task 0: packed mask does not match the raw mask"]


def test_bad_pack_requests_write_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", count=1)
    with pytest.raises(ConfigError, match="unknown codec"):
        store.pack("huffman")
    with pytest.raises(ConfigError, match="--drop-raw needs --out"):
        store.pack(drop_raw=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(StoreError, match="already exists"):
        store.pack(out=tmp_path / "taken", drop_raw=True)
    assert MaskStore.open(store.path).header.packed is None
    assert list((tmp_path / "taken").iterdir()) == []
    store.pack(out=tmp_path / "small.zarr", drop_raw=True)
    with pytest.raises(ConfigError, match="raw masks were dropped"):
        MaskStore.open(tmp_path / "small.zarr").pack()


def test_packed_headers_follow_the_json_schema(tmp_path: Path) -> None:
    schema = json.loads(
        (
            Path(__file__).resolve().parents[1] / "formats" / "supsup-store-v1.schema.json"
        ).read_text()
    )
    store = make_store(tmp_path / "s.zarr", count=2)
    store.pack(out=tmp_path / "small.zarr", drop_raw=True)
    store.pack()
    for path, version in ((store.path, 1), (tmp_path / "small.zarr", 3)):
        header = zarr.open_group(str(path), mode="r").attrs[ATTRIBUTE_KEY]
        jsonschema.validate(header, schema)
        assert header["version"] == version
    header = dict(header, version=2)  # raw dropped needs version 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(header, schema)
