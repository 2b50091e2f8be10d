"""Mask algebra against plain numpy on unpacked bits: overlap, merge, export of subnetworks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supsup_cli.errors import ConfigError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.learn import mask_algebra
from supsup_cli.learn.mask_algebra import export_task, mask_overlap, merge_masks, merge_tasks
from supsup_cli.model.nets import build_net
from supsup_cli.model.supermask import bits_to_masks
from supsup_cli.store import MaskStore

NET = NetConfig("lenet-300-100", outputs=10, seed=5)
D = NET.mask_bits  # 266,200: a multiple of 8, so the tests below also use a padded case


def synthetic_store(path: Path, masks: list[np.ndarray], net: NetConfig = NET) -> MaskStore:
    """A store holding exactly these masks (no training), scores = task index (summed)."""
    store = MaskStore.create(path, net, "topk", 0.5, keep_scores=True)
    for index, bits in enumerate(masks):
        store.append_task(
            bits,
            torch.full((net.mask_bits,), float(index)),
            data=f"permuted:{index + 1}",
            classes=range(index % 3, net.outputs),
            accuracy=0.5,
            train={},
            created="",
            seconds=None,
        )
    return store


def random_masks(count: int, d: int = D, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(d) < rng.uniform(0.05, 0.6) for _ in range(count)]


@pytest.fixture
def store(tmp_path: Path) -> MaskStore:
    masks = random_masks(3)
    masks.append(np.zeros(D, dtype=bool))  # an empty mask: Jaccard with itself is defined as 1
    return synthetic_store(tmp_path / "s.zarr", masks)


def test_overlap_matches_numpy(store: MaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bits = np.stack([store.read_mask(i) for i in range(store.task_count)]).astype(np.int64)
    shared = bits @ bits.T
    union = bits.sum(1)[:, None] + bits.sum(1)[None, :] - shared
    expected_jaccard = np.where(union > 0, shared / np.maximum(union, 1), 1.0)
    expected_hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    # 4,099 packed bytes per block for these 4 tasks: many blocks, a ragged last one
    monkeypatch.setattr(mask_algebra, "GRAM_BLOCK_FLOATS", 4 * 8 * 4099)
    result = mask_overlap(store)
    assert np.array_equal(result.shared, shared)
    assert np.allclose(result.jaccard, expected_jaccard)
    assert np.array_equal(result.hamming, expected_hamming)
    assert np.allclose(np.diag(result.jaccard), 1.0)
    picked = mask_overlap(store, [2, 0])
    assert picked.tasks == (2, 0)
    assert np.array_equal(picked.shared, shared[np.ix_([2, 0], [2, 0])])


def test_overlap_with_padding_bits(tmp_path: Path) -> None:
    net = NetConfig("lenet-300-100", outputs=3, seed=1)  # D = 265,500 + 300 = not a multiple of 8
    assert net.mask_bits % 8
    masks = random_masks(2, net.mask_bits, seed=4)
    result = mask_overlap(synthetic_store(tmp_path / "p.zarr", masks, net))
    assert result.shared[0, 1] == int(np.sum(masks[0] & masks[1]))
    assert result.hamming[0, 1] == int(np.sum(masks[0] ^ masks[1]))


def test_overlap_rejects_a_task_out_of_range(store: MaskStore) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        mask_overlap(store, [0, 9])


@pytest.mark.parametrize("count", [2, 3, 4])
def test_merge_rules_match_numpy(count: int) -> None:
    d = 1001  # not a multiple of 8
    masks = random_masks(count, d, seed=count)
    packed = np.stack([np.packbits(m) for m in masks])
    stacked = np.stack(masks)
    assert np.array_equal(merge_masks(packed, d, "and"), stacked.all(0))
    assert np.array_equal(merge_masks(packed, d, "or"), stacked.any(0))
    assert np.array_equal(merge_masks(packed, d, "majority"), stacked.sum(0) > count / 2)
    with pytest.raises(ConfigError, match="and, or, majority"):
        merge_masks(packed, d, "xor")


def test_merge_appends_a_derived_task(store: MaskStore) -> None:
    mean_before = store.score_mean()
    record = merge_tasks(Path(store.path), [0, 2], "and")
    reopened = MaskStore.open(store.path)
    assert record.index == 4 and reopened.task_count == 5
    assert record.data == "merge:0,2:and"
    assert record.train["parents"] == [0, 2] and record.train["derived"] == "merge"
    assert record.classes == tuple(range(0, 10))  # union of the parents' classes
    merged = reopened.read_mask(4)
    assert np.array_equal(merged, reopened.read_mask(0) & reopened.read_mask(2))
    assert record.train["kept"] == pytest.approx(merged.mean())
    np.testing.assert_allclose(reopened.score_mean(), mean_before)  # transfer init unchanged
    assert reopened.verify() == []


@pytest.mark.parametrize(
    ("tasks", "rule", "message"),
    [
        ([0, 7], "and", "out of range"),
        ([1], "or", "at least two distinct"),
        ([1, 1], "or", "at least two distinct"),
        ([0, 1], "nand", "valid rules"),
    ],
)
def test_merge_bad_input_changes_nothing(
    store: MaskStore, tasks: list[int], rule: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        merge_tasks(Path(store.path), tasks, rule)
    assert MaskStore.open(store.path).task_count == 4


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_export_is_the_masked_network(permuted_store: Path, tmp_path: Path, suffix: str) -> None:
    """The exported dense weights compute what the fixed net computes with the task's mask."""
    out = tmp_path / f"task1{suffix}"
    result = export_task(permuted_store, 1, out)
    if suffix == ".pt":
        tensors = torch.load(out, weights_only=True)
    else:
        with np.load(out, allow_pickle=False) as archive:
            tensors = {k: torch.from_numpy(archive[k]) for k in archive.files}
    store = MaskStore.open(permuted_store)
    net = build_net(store.net)
    masks = bits_to_masks(store.read_mask(1), store.net.mask_shapes)
    assert sorted(tensors) == [f"layers.{i}.weight" for i in range(len(masks))]
    for index, mask in enumerate(masks):
        assert torch.equal(tensors[f"layers.{index}.weight"] != 0, mask.bool())
    x = torch.randn(16, 784)
    h = x
    for index in range(len(masks)):
        h = F.linear(h, tensors[f"layers.{index}.weight"])
        h = F.relu(h) if index < len(masks) - 1 else h
    assert torch.allclose(h, net(x, masks), atol=1e-5)
    assert result.kept == int(store.read_mask(1).sum()) and result.total == store.net.mask_bits


def test_export_bad_input_writes_nothing(permuted_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.pt or \.npz"):
        export_task(permuted_store, 0, tmp_path / "task.pkl")
    with pytest.raises(ConfigError, match="out of range"):
        export_task(permuted_store, 3, tmp_path / "task.pt")
    existing = tmp_path / "mine.pt"
    existing.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="already exists"):
        export_task(permuted_store, 0, existing)
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pt"]


def test_export_refuses_channel_masked_networks(tmp_path: Path) -> None:
    store = MaskStore.create(tmp_path / "bn.zarr", NetConfig("bn-2048-2048"), "sign", None)
    with pytest.raises(ConfigError, match="masks channels"):
        export_task(Path(store.path), 0, tmp_path / "bn.pt")


def test_merge_then_overlap_on_a_trained_store(permuted_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(permuted_store, copy)
    merge_tasks(copy, [0, 1, 2], "majority")
    result = mask_overlap(MaskStore.open(copy))
    # the majority of three masks shares more with each parent than the parents share pairwise
    assert result.jaccard[3, :3].min() > result.jaccard[:3, :3][np.triu_indices(3, 1)].max()
