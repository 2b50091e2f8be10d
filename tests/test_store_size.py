"""The fixed size of a store (format version 4): a store of a few tasks is about its masks.
mask_counts is summed from the masks until a store holds many tasks, then stored; score_sum is
kept only by stores made for `--transfer`; copies carry what the source holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.bits import unpack_mask
from supsup_cli.learn.train import CreationOptions, TrainConfig, train_task
from supsup_cli.store import MaskStore, layout
from supsup_cli.store.reader import summed_counts

runner = CliRunner()
NET = NetConfig("lenet-300-100", 10, 0)
MASK_BYTES = 33_275  # one lenet-300-100 mask with 10 outputs
PER_WEIGHT = ("mask_counts", "score_sum")


def append_random(store: MaskStore, seed: int, scores: bool = True) -> np.ndarray:
    """Append a random density-0.5 mask (and scores); returns its bits."""
    rng = np.random.default_rng(seed)
    bits = rng.random(store.net.mask_bits) < 0.5
    store.append_task(
        bits,
        rng.standard_normal(store.net.mask_bits).astype(np.float32) if scores else None,
        data=f"permuted:{seed}",
        classes=range(10),
        accuracy=0.5,
        train={"seed": seed},
        created="2026-01-01T00:00:00+00:00",
        seconds=1.0,
    )
    return bits


def file_bytes(path: Path, skip: str | None = None) -> int:
    """Bytes of the files of a store folder, without those under `skip`."""
    return sum(
        f.stat().st_size
        for f in path.rglob("*")
        if f.is_file() and (skip is None or not f.relative_to(path).parts[0] == skip)
    )


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in path.rglob("*") if f.is_file()}


def test_five_trained_tasks_take_little_more_than_their_masks(
    permuted_store: Path, tmp_path: Path
) -> None:
    """Issue 19 item 11: 5 tasks of lenet-300-100 (train-task defaults: top-k 0.5), at most
    1.1 x 5 masks besides the records (today's stores: 2.4 MB, 2.1 MB of per-weight sums)."""
    path = Path(shutil.copytree(permuted_store, tmp_path / "s.zarr"))
    for spec in ("permuted:4", "permuted:5"):
        train_task(path, spec, CreationOptions(), TrainConfig(batches=5))
    store = MaskStore.open(path)
    assert store.task_count == 5
    assert file_bytes(path, skip="records") <= 1.1 * 5 * MASK_BYTES
    assert (store.header.version, store.header.slot_arrays) == (4, ())
    assert not any((path / name).exists() for name in PER_WEIGHT)
    assert store.verify() == []


def test_summed_counts_equal_stored_counts_of_the_same_masks(tmp_path: Path) -> None:
    old = MaskStore.create(tmp_path / "v1.zarr", NET, "topk", 0.5, version=1)
    lean = MaskStore.create(tmp_path / "v4.zarr", NET, "topk", 0.5)
    masks = [append_random(store, seed) for seed in (1, 2, 3) for store in (old, lean)][::2]
    assert (old.header.slot_arrays, lean.header.slot_arrays) == (PER_WEIGHT, ())
    stored, summed = old.mask_counts(), lean.mask_counts()
    assert summed.dtype == stored.dtype == np.uint32
    assert np.array_equal(summed, stored)
    assert np.array_equal(summed, np.sum(masks, axis=0))
    assert np.array_equal(summed_counts(old), stored)


def test_a_store_crossing_the_threshold_stores_its_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "STORED_COUNTS_TASKS", 3)
    store = MaskStore.create(tmp_path / "s.zarr", NET, "topk", 0.5)
    masks = [append_random(store, seed, scores=False) for seed in (1, 2)]
    assert store.header.slot_arrays == () and not (tmp_path / "s.zarr" / "mask_counts").exists()
    assert store.verify() == []
    masks.append(append_random(store, 3, scores=False))  # the third task: counts stored
    assert store.header.slot_arrays == ("mask_counts",)
    assert store.verify() == []
    assert np.array_equal(store.read_slot("mask_counts"), np.sum(masks, axis=0))
    masks.append(append_random(store, 4, scores=False))  # kept current from then on
    new = np.random.default_rng(9).random(NET.mask_bits) < 0.5
    store.replace_task(1, new, np.zeros(NET.mask_bits), accuracy=None, train={}, seconds=None)
    masks[1] = new
    reopened = MaskStore.open(store.path)
    assert reopened.verify() == []
    assert np.array_equal(reopened.read_slot("mask_counts"), np.sum(masks, axis=0))
    assert np.array_equal(summed_counts(reopened), reopened.mask_counts())


def test_transfer_on_a_store_without_score_sums_is_refused_and_writes_nothing(
    permuted_store: Path, tmp_path: Path
) -> None:
    path = Path(shutil.copytree(permuted_store, tmp_path / "s.zarr"))
    before = snapshot(path)
    argv = ["train-task", str(path), "--data", "permuted:4", "--batches", "2", "--transfer"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--keep-scores" in lines[0] and "Traceback" not in result.stderr
    assert snapshot(path) == before


def test_stores_made_for_transfer_keep_score_sums(tmp_path: Path) -> None:
    made = runner.invoke(app, ["init", str(tmp_path / "a.zarr"), "--keep-scores", "--json"])
    assert made.exit_code == 0, made.output
    for path in (tmp_path / "a.zarr", tmp_path / "b.zarr"):  # init, or a first --transfer
        for spec in ("permuted:1", "permuted:2"):
            argv = ["train-task", str(path), "--data", spec, "--batches", "2", "--transfer"]
            result = runner.invoke(app, [*argv, "--quiet"])
            assert result.exit_code == 0, result.output
        store = MaskStore.open(path)
        assert store.header.slot_arrays == ("score_sum",) and store.keeps_scores
        assert store.score_mean() is not None and np.isfinite(store.score_mean()).all()
        assert store.verify() == []


def test_copy_and_pack_carry_what_the_store_holds(tmp_path: Path) -> None:
    lean = MaskStore.create(tmp_path / "lean.zarr", NET, "topk", 0.5)
    kept = MaskStore.create(tmp_path / "kept.zarr", NET, "topk", 0.5, keep_scores=True)
    for seed in (1, 2):
        append_random(lean, seed)
        append_random(kept, seed)
    (tmp_path / "lean.zarr" / "mask_counts").mkdir()  # a killed writer's leftover: not copied
    for source, held in ((lean, ()), (kept, ("score_sum",))):
        copy = source.copy_to(tmp_path / f"{Path(source.path).name}-copy.zarr")
        pack = tmp_path / f"{Path(source.path).name}-packed.zarr"
        source.pack(codec="range-site", out=pack, drop_raw=True)
        for made in (copy, MaskStore.open(pack)):
            assert made.header.version == 4 and made.header.slot_arrays == held
            present = {name for name in PER_WEIGHT if (Path(made.path) / name).exists()}
            assert present == set(held) and made.verify() == []
            assert np.array_equal(made.mask_counts(), source.mask_counts())
    # dropping the raw masks of a density-0.5 store no longer makes it larger
    assert file_bytes(tmp_path / "lean-packed.zarr") <= file_bytes(tmp_path / "lean.zarr")


def test_old_layout_stores_keep_both_arrays_when_written_and_copied(tmp_path: Path) -> None:
    old = MaskStore.create(tmp_path / "v1.zarr", NET, "topk", 0.5, version=1)
    masks = [append_random(old, seed) for seed in (1, 2)]
    copy = old.copy_to(tmp_path / "copy.zarr")
    for store in (old, copy):
        assert (store.header.version, store.header.slot_arrays) == (1, PER_WEIGHT)
        assert np.array_equal(store.read_slot("mask_counts"), np.sum(masks, axis=0))
        assert store.score_mean() is not None and store.verify() == []


def test_counts_of_hopfield_dropped_masks_come_from_the_pattern_sum(tmp_path: Path) -> None:
    """A lean store whose masks were dropped after Hopfield encoding still reads its counts."""
    from supsup_cli.learn.hopfield import encode_tasks

    net = NetConfig("bn-2048-2048", 10, 0)
    store = MaskStore.create(tmp_path / "s.zarr", net, "topk", 0.5)
    masks = []
    for seed in (1, 2, 3):
        rng = np.random.default_rng(seed)
        masks.append(rng.random(net.mask_bits) < 0.5)
        store.append_task(
            masks[-1],
            None,
            data=f"split:{seed}",
            classes=[0, 1],
            accuracy=None,
            train={},
            created="x",
            seconds=None,
            task_stats=np.ones(net.stats_size, dtype=np.float32),
        )
    encode_tasks(Path(store.path), [0, 1])
    store = MaskStore.open(store.path, writable=True)
    store.drop_masks([1])
    assert np.array_equal(store.mask_counts(), np.sum(masks, axis=0))
    assert store.verify() == []
    assert np.array_equal(unpack_mask(store.read_packed([2]), net.mask_bits)[0], masks[2])
