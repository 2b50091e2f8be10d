"""The conformance corpus (formats/conformance): golden stores regenerate bit for bit, read and
verify; hostile stores are written as folders with a README; and a store opened with plain zarr
lists its members without warnings (the writer lock lives beside the store folder)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import zarr

from supsup_cli.errors import StoreError
from supsup_cli.format.bits import unpack_mask
from supsup_cli.store import MaskStore
from supsup_cli.store.layout import LOCK_NAME

CONFORMANCE = Path(__file__).resolve().parents[1] / "formats" / "conformance"


@pytest.fixture(scope="module")
def corpus() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_corpus", CONFORMANCE / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden(corpus: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "golden"
    corpus.make_golden(out)
    return out


def test_golden_stores_regenerate_bit_for_bit(corpus: ModuleType, golden: Path) -> None:
    made = corpus.digests(golden).splitlines()
    pinned = (CONFORMANCE / "golden.sha256").read_text().splitlines()
    assert [line.split()[1] for line in made] == [line.split()[1] for line in pinned], "files"
    assert made == pinned, sorted(set(made) ^ set(pinned))


@pytest.mark.parametrize(
    ("name", "version", "tasks"),
    [
        ("lenet-2tasks.zarr", 1, 2),
        ("lenet-3tasks.zarr", 1, 3),
        ("lenet-v2-replaced.zarr", 2, 3),
        ("lenet-v3-packed.zarr", 3, 2),
        ("bn-2tasks.zarr", 1, 2),
        ("lenet-v4-2tasks.zarr", 4, 2),
        ("lenet-v4-scores.zarr", 4, 2),
        ("lenet-v4-packed.zarr", 4, 2),
        ("bn-v4-counts.zarr", 4, 3),
    ],
)
def test_golden_stores_read_and_verify(golden: Path, name: str, version: int, tasks: int) -> None:
    store = MaskStore.open(golden / name)
    assert (store.header.version, store.task_count) == (version, tasks)
    assert store.verify() == []
    assert len(store.read_packed()) == tasks
    if version == 2:
        assert store.task(1).revision == 1 and len(store.read_log()) == 1


@pytest.mark.parametrize(
    ("name", "held"),
    [
        ("lenet-2tasks.zarr", {"mask_counts", "score_sum"}),
        ("lenet-v4-2tasks.zarr", set()),
        ("lenet-v4-scores.zarr", {"score_sum"}),
        ("lenet-v4-packed.zarr", set()),
        ("bn-v4-counts.zarr", {"mask_counts"}),
    ],
)
def test_golden_stores_hold_the_per_weight_arrays_their_slots_name(
    golden: Path, name: str, held: set[str]
) -> None:
    """Version 4 keeps mask_counts and score_sum only where `slots` names them; the counts
    read (stored or summed from the masks) are the masks' sum either way."""
    header = json.loads((golden / name / "zarr.json").read_text())["attributes"]["supsup"]
    present = {p.name for p in (golden / name).iterdir()} & {"mask_counts", "score_sum"}
    assert set(header["slots"]) == present == held
    store = MaskStore.open(golden / name)
    summed = unpack_mask(store.read_packed(), store.header.mask_bits).sum(axis=0)
    assert np.array_equal(store.mask_counts(), summed)


def test_listing_a_store_with_zarr_does_not_warn(golden: Path, tmp_path: Path) -> None:
    store = MaskStore.open(Path(shutil.copytree(golden / "lenet-2tasks.zarr", tmp_path / "s.zarr")))
    with store.transaction():  # a writer came and went: its lock must not be in the folder
        pass
    assert not (tmp_path / "s.zarr" / LOCK_NAME).exists()
    assert (tmp_path / f".s.zarr{LOCK_NAME}").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(zarr.open_group(str(tmp_path / "s.zarr"), mode="r").members())
    assert {"masks", "records", "mask_counts", "score_sum"} <= set(members)


def test_a_lock_file_left_in_the_store_by_an_earlier_release_is_honoured(
    golden: Path, tmp_path: Path
) -> None:
    """Earlier releases locked `<store>/.supsup.lock`: while one of their writers holds it,
    a writer of this release waits for it (and here times out) instead of writing beside it."""
    from filelock import FileLock

    from supsup_cli.store import location

    path = Path(shutil.copytree(golden / "lenet-2tasks.zarr", tmp_path / "s.zarr"))
    with FileLock(path / LOCK_NAME), pytest.raises(StoreError, match="held the lock"):
        with location.write_lock(str(path), LOCK_NAME, timeout=0.2):
            pass
    with location.write_lock(str(path), LOCK_NAME, timeout=0.2):  # released: taken at once
        assert (path / location.WRITING_MARKER).exists()


def test_hostile_stores_are_written_as_folders_with_a_readme(
    corpus: ModuleType, golden: Path, tmp_path: Path
) -> None:
    names = {"version-from-future", "record-sha-mismatch", "leftover-rows-past-count"}
    corpus.make_hostile(tmp_path, golden / "lenet-3tasks.zarr", only=names)
    readme = (tmp_path / "README.md").read_text()
    assert all(f"`{name}.zarr` |" in readme for name in names)
    assert {p.name for p in tmp_path.iterdir()} == {"README.md"} | {f"{n}.zarr" for n in names}
    with pytest.raises(StoreError, match="newer than this supsup reads"):
        MaskStore.open(tmp_path / "version-from-future.zarr")
    forged = MaskStore.open(tmp_path / "record-sha-mismatch.zarr")
    assert any("sha256" in problem for problem in forged.verify())
    assert MaskStore.open(tmp_path / "leftover-rows-past-count.zarr").verify() == []
    header = json.loads((tmp_path / "version-from-future.zarr" / "zarr.json").read_text())
    assert header["attributes"]["supsup"]["version"] == 99
