"""The mask store against its spec: layout, commit protocol, reader checks, concurrent appends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import zarr

from supsup_cli.errors import ConfigError, StoreError, StoreMismatchError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.bits import pack_mask, unpack_mask
from supsup_cli.format.header import mask_checksum
from supsup_cli.store import MaskStore
from supsup_cli.store import layout as store_module
from supsup_cli.store.layout import ATTRIBUTE_KEY, CREATING_KEY

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "formats" / "supsup-store-v1.schema.json").read_text()
)
NET = NetConfig("lenet-300-100", outputs=10, seed=3)
D = NET.mask_bits


def random_mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(D) < 0.5


def append(store: MaskStore, seed: int, spec: str = "permuted:1") -> None:
    store.append_task(
        random_mask(seed),
        torch.full((D,), float(seed)),
        data=spec,
        classes=range(10),
        accuracy=0.5,
        train={"batches": 1},
        created="2026-01-01T00:00:00+00:00",
        seconds=1.0,
    )


@pytest.fixture
def store(tmp_path: Path) -> MaskStore:
    return MaskStore.create(tmp_path / "s.zarr", NET, "topk", 0.5)


@pytest.fixture
def old_layout(tmp_path: Path) -> MaskStore:
    """Version 1, as earlier releases made stores: mask_counts and score_sum from the start."""
    return MaskStore.create(tmp_path / "v1.zarr", NET, "topk", 0.5, version=1)


@pytest.mark.parametrize("made", ["version 1", "version 4 keeping scores"])
def test_append_reopen_and_read_back(tmp_path: Path, made: str) -> None:
    version, keep = (1, False) if made == "version 1" else (4, True)
    store = MaskStore.create(
        tmp_path / "s.zarr", NET, "topk", 0.5, keep_scores=keep, version=version
    )
    for seed in range(3):
        append(store, seed, f"permuted:{seed}")
    reopened = MaskStore.open(store.path)
    assert reopened.task_count == 3
    for seed in range(3):
        assert np.array_equal(reopened.read_mask(seed), random_mask(seed))
    expected_counts = sum(random_mask(s).astype(np.uint32) for s in range(3))
    assert np.array_equal(reopened.mask_counts(), expected_counts)
    np.testing.assert_allclose(reopened.score_mean(), np.full(D, 1.0))
    assert [r.data for r in reopened.tasks()] == ["permuted:0", "permuted:1", "permuted:2"]
    assert reopened.verify() == []


def test_plain_zarr_reads_the_masks(store: MaskStore) -> None:
    append(store, 1)
    group = zarr.open_group(store.path, mode="r")
    header = group.attrs[ATTRIBUTE_KEY]
    row = group["masks"][0]
    assert row.shape == (33_275,) and header["mask"]["bytes"] == 33_275
    assert np.array_equal(unpack_mask(row, header["mask"]["bits"]), random_mask(1))
    record = json.loads(bytes(group["records"][0]).rstrip(b"\0"))
    assert record["sha256"] == mask_checksum(row)


def test_header_and_records_follow_the_json_schema(store: MaskStore) -> None:
    append(store, 1)
    group = zarr.open_group(store.path, mode="r")
    jsonschema.validate(group.attrs[ATTRIBUTE_KEY], SCHEMA)
    record_schema = {**SCHEMA["$defs"]["task_record"], "$defs": SCHEMA["$defs"]}
    jsonschema.validate(MaskStore.open(store.path).task(0).to_dict(), record_schema)


def test_rows_past_the_committed_count_are_ignored(old_layout: MaskStore) -> None:
    store = old_layout
    append(store, 1)
    # what a writer killed before its commit leaves: a row 1 and a scratch counts slot
    group = zarr.open_group(store.path, mode="r+")
    group["masks"].resize((2, group["masks"].shape[1]))
    group["masks"][1] = 255
    group["mask_counts"][0] = 7
    reopened = MaskStore.open(store.path)
    assert reopened.task_count == 1 and reopened.verify() == []
    append(reopened, 2)
    assert np.array_equal(MaskStore.open(store.path).read_mask(1), random_mask(2))
    assert MaskStore.open(store.path).verify() == []


def test_checksum_mismatch_is_caught(store: MaskStore) -> None:
    append(store, 1)
    group = zarr.open_group(store.path, mode="r+")
    row = group["masks"][0]
    row[5] ^= 0b100
    group["masks"][0] = row
    reopened = MaskStore.open(store.path)
    with pytest.raises(StoreError, match="sha256"):
        reopened.read_mask(0)
    assert any("sha256" in p for p in reopened.verify())


def test_a_damaged_mask_among_many_slabs_is_named(store: MaskStore, monkeypatch) -> None:
    """Checksums run on worker threads while later slabs are read, and streamed blocks are read
    ahead: the damaged task is still the one named, and the blocks before it are handed out."""
    monkeypatch.setattr("supsup_cli.store.layout.READ_SLAB_BYTES", 1)  # one mask per slab and block
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    for seed in range(6):
        append(store, seed)
    group = zarr.open_group(store.path, mode="r+")
    row = group["masks"][4]
    row[0] ^= 1
    group["masks"][4] = row
    reopened = MaskStore.open(store.path)
    np.testing.assert_array_equal(
        reopened.read_packed([0, 5]), [pack_mask(random_mask(s)) for s in (0, 5)]
    )
    with pytest.raises(StoreError, match="task 4: mask bytes do not match their sha256"):
        reopened.read_packed()
    handed_out = []
    with pytest.raises(StoreError, match="task 4: mask bytes"):
        for block in reopened.iter_packed():
            handed_out.append(block)
    assert len(handed_out) == 4


def test_counts_that_disagree_are_caught(old_layout: MaskStore) -> None:
    store = old_layout
    append(store, 1)
    group = zarr.open_group(store.path, mode="r+")
    group["mask_counts"][1] = 0  # current slot for task_count 1
    assert any("mask_counts" in p for p in MaskStore.open(store.path).verify())


def test_future_version_and_foreign_folders_are_refused(tmp_path: Path, store: MaskStore) -> None:
    group = zarr.open_group(store.path, mode="r+")
    attrs = dict(group.attrs[ATTRIBUTE_KEY], version=99)
    group.attrs[ATTRIBUTE_KEY] = attrs
    with pytest.raises(StoreError, match="newer"):
        MaskStore.open(store.path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        MaskStore.create(other, NET, "topk", 0.5)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(StoreError, match="no such store"):
        MaskStore.open(tmp_path / "missing.zarr")


def test_interrupted_creation_is_redone(tmp_path: Path) -> None:
    path = tmp_path / "half.zarr"
    zarr.create_group(str(path), attributes={CREATING_KEY: True}).create_array(
        "masks", shape=(1, 1), dtype="uint8"
    )
    assert not MaskStore.exists(path)
    store = MaskStore.create(path, NET, "sign", None)
    assert store.task_count == 0 and store.verify() == []


def test_creation_options_that_contradict_the_store(store: MaskStore) -> None:
    store.check_compatible(arch="lenet-300-100", outputs=10, seed=3, mask_rule="topk", density=0.5)
    with pytest.raises(StoreMismatchError, match="--outputs 100 contradicts"):
        store.check_compatible(outputs=100)
    with pytest.raises(StoreMismatchError, match="--seed"):
        store.check_compatible(seed=4)


def test_task_index_out_of_range(store: MaskStore) -> None:
    append(store, 1)
    with pytest.raises(ConfigError, match=r"holds 1 task\(s\) \(0..0\)"):
        store.task(1)


def test_wrong_mask_size_is_refused(store: MaskStore) -> None:
    with pytest.raises(StoreMismatchError):
        store.append_task(
            np.zeros(10, bool),
            torch.zeros(10),
            data="permuted:1",
            classes=[0],
            accuracy=None,
            train={},
            created="",
            seconds=None,
        )
    assert MaskStore.open(store.path).task_count == 0


APPENDER = """
import sys, numpy as np, torch
from supsup_cli.store import MaskStore
store = MaskStore.open(sys.argv[1], writable=True)
for i in range(int(sys.argv[3])):
    bits = np.random.default_rng(int(sys.argv[2]) * 100 + i).random(store.header.mask_bits) < 0.5
    store.append_task(bits, torch.zeros(store.header.mask_bits), data=f"permuted:{sys.argv[2]}",
                      classes=range(10), accuracy=None, train={}, created="", seconds=None)
"""


def test_two_concurrent_appenders_both_land(store: MaskStore) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, store.path, str(w), "4"]) for w in (1, 2)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    reopened = MaskStore.open(store.path)
    assert reopened.task_count == 8
    assert sorted(r.data for r in reopened.tasks()) == ["permuted:1"] * 4 + ["permuted:2"] * 4
    assert reopened.verify() == []
    assert len({r.sha256 for r in reopened.tasks()}) == 8


def test_pack_matches_what_the_store_keeps(store: MaskStore) -> None:
    append(store, 9)
    assert np.array_equal(MaskStore.open(store.path).read_packed([0])[0], pack_mask(random_mask(9)))


def test_new_stores_keep_many_rows_per_chunk(store: MaskStore) -> None:
    """A few hundred files for thousands of tasks; the last, partly used chunk stays small."""
    for seed in range(130):  # past the first chunk of 126 rows
        append(store, seed)
    group = zarr.open_group(store.path, mode="r")
    rows = group.attrs[ATTRIBUTE_KEY]["row_chunk"]
    assert rows == store_module.default_row_chunk(NET) == 4 * 2**20 // 33_275
    assert group["masks"].chunks == (rows, 33_275) and group["records"].chunks == (rows, 4096)
    files = [p for p in (Path(store.path) / "masks").rglob("*") if p.is_file()]
    assert len(files) == 3  # zarr.json and two chunks
    reopened = MaskStore.open(store.path)
    assert reopened.verify() == []
    assert np.array_equal(reopened.read_mask(127), random_mask(127))
    last = Path(store.path) / "masks" / "c" / "1" / "0"
    assert last.stat().st_size < 5 * 33_275, "4 rows in use: the unused rows cost no disk"


def test_stores_with_one_row_per_chunk_still_read_and_grow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores written before `row_chunk` existed: no such key, one row per chunk, raw masks."""
    monkeypatch.setattr(store_module, "default_row_chunk", lambda net: 1)
    old = MaskStore.create(tmp_path / "old.zarr", NET, "topk", 0.5, version=1)
    append(old, 1)
    monkeypatch.undo()
    group = zarr.open_group(old.path, mode="r")
    assert "row_chunk" not in group.attrs[ATTRIBUTE_KEY] and group["masks"].chunks == (1, 33_275)
    reopened = MaskStore.open(old.path, writable=True)
    append(reopened, 2)
    assert MaskStore.open(old.path).verify() == []
    assert np.array_equal(MaskStore.open(old.path).read_mask(1), random_mask(2))


@pytest.mark.parametrize("value", [0, -1, 2017, 4097, 1.5, True, "8"])  # 2017 rows > 64 MiB
def test_invalid_row_chunk_is_refused(store: MaskStore, value: object) -> None:
    append(store, 1)
    group = zarr.open_group(store.path, mode="r+")
    header = dict(group.attrs[ATTRIBUTE_KEY])
    header["row_chunk"] = value
    group.attrs[ATTRIBUTE_KEY] = header
    with pytest.raises(StoreError, match="row_chunk"):
        MaskStore.open(store.path)


def test_a_row_chunk_that_disagrees_with_the_arrays_is_refused(store: MaskStore) -> None:
    append(store, 1)
    group = zarr.open_group(store.path, mode="r+")
    header = dict(group.attrs[ATTRIBUTE_KEY])
    header["row_chunk"] = 1
    group.attrs[ATTRIBUTE_KEY] = header
    with pytest.raises(StoreError, match="chunks"):
        MaskStore.open(store.path)
