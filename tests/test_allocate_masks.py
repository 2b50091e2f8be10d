"""allocate's in-memory view of the known masks, without training or a store: the counts stay the
sum of the rows, decisions are padded with the untrained masks, other writers' tasks go in place."""

from __future__ import annotations

import numpy as np

from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.bits import pack_mask, unpack_mask
from supsup_cli.format.header import TaskRecord, mask_checksum
from supsup_cli.learn.allocate_masks import KnownMasks, MaskInfo, fresh_scores
from supsup_cli.model.supermask import ScoreMasks

CONFIG = NetConfig("lenet-300-100", outputs=100, seed=4)
D = CONFIG.mask_bits


def random_bits(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(D) < 0.5).astype(np.uint8)


def record(index: int, bits: np.ndarray, classes: tuple[int, ...]) -> TaskRecord:
    """Another writer's task `index` (data permuted:(10 + index))."""
    checksum = mask_checksum(pack_mask(bits))
    return TaskRecord(index, f"permuted:{10 + index}", classes, "sign", None, 0.9, checksum)


def assert_consistent(view: KnownMasks) -> None:
    """The counts are the sum of the rows, whatever happened to them."""
    rows = unpack_mask(view.packed, D)
    np.testing.assert_array_equal(view.counts, rows.sum(0, dtype=np.int64))
    assert len(view.info) == view.known


def test_an_empty_view_pads_a_decision_with_five_untrained_masks() -> None:
    view = KnownMasks.empty(CONFIG, "sign", None)
    assert view.known == view.stored == 0
    packed, counts, classes = view.candidates()
    assert packed.shape == (5, view.packed.shape[1]) and classes == []
    for index in range(5):  # each is what a new mask `index` starts as under the sign rule
        expected = ScoreMasks(fresh_scores(CONFIG, index), "sign", None).mask_bits()
        np.testing.assert_array_equal(unpack_mask(packed[index], D), expected)
    np.testing.assert_array_equal(counts, unpack_mask(packed, D).sum(0))


def test_adding_training_and_storing_a_mask_keep_the_counts() -> None:
    view = KnownMasks.empty(CONFIG, "sign", None)
    index = view.add(MaskInfo("permuted:1", (0, 1, 2), {}))
    assert index == 0 and view.known == 1 and view.stored == 0
    np.testing.assert_array_equal(view.packed[0], view.placeholder(0))
    trained = random_bits(1)
    view.update(0, trained)
    np.testing.assert_array_equal(view.bits(0), trained)
    assert_consistent(view)
    view.mark_stored(0)
    assert view.stored_sha == [mask_checksum(pack_mask(trained))]
    # One known mask and four untrained ones (indices 1..4) decide the next batch.
    packed, counts, classes = view.candidates()
    np.testing.assert_array_equal(packed[0], pack_mask(trained))
    np.testing.assert_array_equal(packed[1], view.placeholder(1))
    np.testing.assert_array_equal(counts, unpack_mask(packed, D).sum(0))
    assert classes == [0, 1, 2]


def test_another_writers_tasks_go_between_the_stored_masks_and_the_new_one() -> None:
    view = KnownMasks.empty(CONFIG, "sign", None)
    view.add(MaskInfo("permuted:1", (0, 1), {}))
    view.update(0, random_bits(2))
    view.mark_stored(0)
    view.add(MaskInfo("permuted:2", (2, 3), {}))  # new, not written yet
    new_bits = random_bits(3)
    view.update(1, new_bits)
    theirs = [random_bits(4), random_bits(5)]
    records = [record(1, theirs[0], (4,)), record(2, theirs[1], (5,))]
    old_placeholder = view.placeholder(2)
    view.take_in(np.stack([pack_mask(b) for b in theirs]), records)
    assert view.known == 4 and view.stored == 3
    np.testing.assert_array_equal(view.bits(1), theirs[0])
    np.testing.assert_array_equal(view.bits(2), theirs[1])
    np.testing.assert_array_equal(view.bits(3), new_bits)  # the unwritten mask moved last
    assert [i.data for i in view.info] == ["permuted:1", "permuted:11", "permuted:12", "permuted:2"]
    assert_consistent(view)
    # Untrained masks now pad from index 4 on: the old placeholder of index 2 is gone.
    assert 2 not in view.placeholders
    packed, _, classes = view.candidates()
    assert packed.shape[0] == 5 and classes == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(packed[4], view.placeholder(4))
    assert not np.array_equal(view.placeholder(4), old_placeholder)


def test_a_changed_stored_mask_no_longer_matches() -> None:
    view = KnownMasks.empty(CONFIG, "sign", None)
    view.add(MaskInfo("permuted:1", (0,), {}))
    mine = random_bits(6)
    view.update(0, mine)
    view.mark_stored(0)
    assert view.matches([record(0, mine, (0,))])
    assert view.matches([record(0, mine, (0,)), record(1, random_bits(7), (1,))])
    assert not view.matches([record(0, random_bits(8), (0,))])
    assert not view.matches([])
