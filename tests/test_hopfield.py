"""Hopfield energy: the Storkey update, stored patterns as minima, atomic encode, --drop-masks,
and recovery of a mask for an unlabelled batch (library and CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import ConfigError, StoreError
from supsup_cli.format.architectures import ARCHITECTURES, Architecture, NetConfig
from supsup_cli.format.bits import unpack_mask
from supsup_cli.learn.data import load_task
from supsup_cli.learn.hopfield import (
    RecoveryConfig,
    attractors,
    batch_entropy,
    encode_tasks,
    energy,
    load_memory,
    recover_batch,
    recover_batches,
    settle,
    storkey_update,
)
from supsup_cli.learn.mask_banks import MaskBank
from supsup_cli.store import MaskStore
from supsup_cli.store.writer import Transaction

runner = CliRunner()
TINY = "bn-test-32-32"
D = 64  # mask bits of the tiny net: two BatchNorms of 32 channels


TinyBN = Architecture("bn-mlp", (32, 32))


@pytest.fixture(autouse=True)
def tiny_arch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A BN-masked net small enough for d = 64 (registered for these tests only)."""
    monkeypatch.setitem(ARCHITECTURES, TINY, TinyBN)


def random_patterns(count: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (count, d), generator=generator).float() * 2 - 1  # (count, d)


def encode_all(patterns: torch.Tensor) -> torch.Tensor:
    psi = torch.zeros(patterns.shape[1], patterns.shape[1])
    for x in patterns:
        psi = storkey_update(psi, x)
    return psi


def tiny_store(path: Path, tasks: int = 3, seed: int = 0, version: int = 4) -> Path:
    """A store of the tiny net holding random masks and statistics (split:0.. as their data);
    version 4 sums its counts from the masks, version 1 stores them."""
    net = NetConfig(TINY, outputs=10, seed=seed)
    store = MaskStore.create(path, net, "sign", None, version=version)
    generator = np.random.Generator(np.random.PCG64(seed))
    for index in range(tasks):
        stats = torch.cat([torch.zeros(32), torch.ones(32), torch.zeros(32), torch.ones(32)])
        store.append_task(
            generator.integers(0, 2, D).astype(bool),
            torch.zeros(D),
            data=f"split:{index}",
            classes=(2 * index, 2 * index + 1),
            accuracy=None,
            train={},
            created="2024-01-01T00:00:00+00:00",
            seconds=None,
            task_stats=stats,
        )
    return path


# -- the energy ------------------------------------------------------------------------------
def test_update_matches_the_direct_formula_on_a_tiny_case() -> None:
    x1, x2 = np.array([1.0, -1.0, 1.0, 1.0]), np.array([-1.0, -1.0, 1.0, -1.0])
    d, eye = 4, np.eye(4)
    psi = (np.outer(x1, x1) - eye) / d  # first pattern: h = 0
    h = psi @ x2
    psi = psi + (np.outer(x2, x2) - eye - np.outer(x2, h) - np.outer(h, x2)) / d
    got = encode_all(torch.tensor(np.stack([x1, x2]), dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), psi, rtol=0, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_stored_pattern_is_a_local_minimum(seed: int) -> None:
    patterns = random_patterns(4, D, seed)
    psi = encode_all(patterns)
    for x in patterns:
        base = energy(psi, x).item()
        for i in range(D):
            flipped = x.clone()
            flipped[i] = -flipped[i]
            assert energy(psi, flipped).item() > base, f"flipping bit {i} lowers E"


def test_settle_falls_to_the_stored_pattern() -> None:
    patterns = random_patterns(3, D, 5)
    psi = encode_all(patterns)
    noisy = patterns[2].clone()
    noisy[:8] = -noisy[:8]
    assert torch.equal(settle(psi, noisy), patterns[2])
    assert torch.equal(settle(psi, patterns[0]), patterns[0]), "a minimum stays put"


@pytest.mark.parametrize("seed", [0, 1])
def test_lowest_minima_from_random_starts_are_the_stored_patterns_and_negations(seed: int) -> None:
    """From Psi alone: random starts settle into minima; the 2n lowest are +-the n patterns."""
    patterns = random_patterns(3, 256, seed)
    psi = encode_all(patterns)
    found = attractors(psi, starts=128, keep=6, seed=seed)
    wanted = {tuple((sign * x > 0).tolist()) for x in patterns for sign in (1, -1)}
    assert {tuple(m.tolist()) for m in found} == wanted
    energies = [energy(psi, m.float() * 2 - 1).item() for m in found]
    assert energies == sorted(energies)
    assert attractors(psi, starts=128, keep=2, seed=seed).shape == (2, 256)


def test_psi_stays_exactly_symmetric() -> None:
    psi = encode_all(random_patterns(6, 200, 3))
    assert torch.equal(psi, psi.T)


# -- encoding into a store -------------------------------------------------------------------
def test_encode_stores_psi_and_verifies(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    outcome = encode_tasks(path)
    assert outcome.encoded == (0, 1, 2) and outcome.psi_bytes == D * D * 4
    store = MaskStore.open(path)
    psi, pattern_sum = store.read_hopfield()
    masks = torch.from_numpy(np.stack([store.read_mask(t) for t in range(3)]).astype(np.float32))
    expected = encode_all(masks * 2 - 1)
    assert np.array_equal(psi, expected.numpy())
    assert np.array_equal(pattern_sum, (masks * 2 - 1).sum(0).numpy().astype(np.int32))
    assert store.verify() == []
    assert store.hopfield_summary() == {
        "tasks": [0, 1, 2],
        "dropped": [],
        "masks": "kept",
        "d": D,
        "dtype": "float32",
        "psi_bytes": D * D * 4,
    }


def test_encoding_in_two_calls_gives_the_same_bytes(tmp_path: Path) -> None:
    one, two = tiny_store(tmp_path / "one.zarr"), tiny_store(tmp_path / "two.zarr")
    encode_tasks(one)
    encode_tasks(two, [0, 1])
    encode_tasks(two, [2])
    assert np.array_equal(
        MaskStore.open(one).read_hopfield()[0], MaskStore.open(two).read_hopfield()[0]
    )
    assert MaskStore.open(two).header.hopfield.tasks == (0, 1, 2)


def test_double_encode_is_refused(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    encode_tasks(path, [0, 1])
    before = MaskStore.open(path).header
    with pytest.raises(ConfigError, match="twice"):
        encode_tasks(path, [1, 2])
    encode_tasks(path)  # the rest: task 2 only
    with pytest.raises(ConfigError, match="nothing to encode"):
        encode_tasks(path)
    assert before.hopfield.tasks == (0, 1)
    assert MaskStore.open(path).header.hopfield.tasks == (0, 1, 2)


def test_bad_task_and_too_large_network_are_refused(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match="out of range"):
        encode_tasks(path, [7])
    lenet = MaskStore.create(tmp_path / "l.zarr", NetConfig("lenet-300-100"), "topk", 0.5)
    with pytest.raises(ConfigError, match="bn-2048-2048"):
        encode_tasks(Path(lenet.path))


def test_encode_interrupted_before_its_commit_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    encode_tasks(path, [0])
    psi_before = MaskStore.open(path).read_hopfield()[0]

    def crash(self, header) -> None:  # noqa: ANN001
        raise OSError("disk gone")

    monkeypatch.setattr(Transaction, "commit_header", crash)
    with pytest.raises(OSError):
        encode_tasks(path, [1, 2])
    monkeypatch.undo()
    monkeypatch.setitem(ARCHITECTURES, TINY, TinyBN)
    store = MaskStore.open(path)
    assert store.header.hopfield.tasks == (0,)
    assert np.array_equal(store.read_hopfield()[0], psi_before)
    assert store.verify() == []
    encode_tasks(path, [1, 2])  # the next writer clears the leftovers and goes on
    assert MaskStore.open(path).verify() == []
    names = sorted(p.name for p in (path / "hopfield").iterdir() if p.is_dir())
    assert names == ["g2"], "only the committed generation is left"


KILLED_ENCODER = """
import sys
from supsup_cli.learn.hopfield import encode_tasks
from supsup_cli.format.architectures import ARCHITECTURES, Architecture
ARCHITECTURES[sys.argv[2]] = Architecture("bn-mlp", (32, 32))
encode_tasks(sys.argv[1], [1, 2])
"""


def test_killed_encoder_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "k.zarr")
    encode_tasks(path, [0])
    before = MaskStore.open(path).read_hopfield()[0]
    env = {**os.environ, "SUPSUP_FAULT_STEP": "before-commit"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_ENCODER, str(path), TINY], env=env, capture_output=True
    )
    assert killed.returncode == -9, killed.stderr.decode()[-500:]
    assert (path / "hopfield" / "g2").exists(), "killed after writing Psi aside"
    store = MaskStore.open(path)
    assert store.header.hopfield.tasks == (0,) and store.verify() == []
    assert np.array_equal(store.read_hopfield()[0], before)
    encode_tasks(path, [1, 2])
    assert MaskStore.open(path).verify() == []


def test_drop_masks_keeps_a_verifiable_store(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    counts = MaskStore.open(path).mask_counts().copy()
    outcome = encode_tasks(path, drop_masks=True)
    assert outcome.dropped == (0, 1, 2)
    store = MaskStore.open(path)
    assert store.verify() == []
    schema = Path(__file__).resolve().parents[1] / "formats" / "supsup-store-v1.schema.json"
    header = zarr.open_group(str(path), mode="r").attrs["supsup"]
    jsonschema.validate(header, json.loads(schema.read_text()))
    assert header["hopfield"]["tasks"] == [0, 1, 2] and header["hopfield"]["dropped"] == [0, 1, 2]
    assert np.array_equal(store.mask_counts(), counts)
    with pytest.raises(StoreError, match="dropped"):
        store.read_mask(1)
    assert not [p for p in (path / "masks").rglob("c/*") if p.is_file()], "mask chunks gone"
    assert store.hopfield_summary()["masks"] == "dropped"
    memory = load_memory(store)  # recovery still has what it needs
    assert memory.patterns == {} and len(memory.fingerprints) == 3


def test_a_streamed_bank_counts_only_the_kept_masks(tmp_path: Path) -> None:
    """After --drop-masks of some tasks, task inference on the rest sums the kept masks, whether
    they are held in memory or read from the store for each product."""
    path = tiny_store(tmp_path / "s.zarr", tasks=3)
    encode_tasks(path)
    MaskStore.open(path, writable=True).drop_masks([1])
    store = MaskStore.open(path)
    held, streamed = MaskBank.from_store(store), MaskBank.from_store(store, stream=True)
    assert streamed.task_ids == held.task_ids == (0, 2)
    np.testing.assert_array_equal(streamed.counts, held.counts)
    expected = store.read_packed([0, 2])
    np.testing.assert_array_equal(held.counts, unpack_mask(expected, D).sum(0))


def test_verify_catches_a_tampered_psi_and_pattern_sum(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    encode_tasks(path, drop_masks=True)
    psi_dir = path / "hopfield" / "g1" / "psi"
    chunk = next(p for p in psi_dir.rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    problems = MaskStore.open(path).verify()
    assert any("sha256" in p for p in problems)


def test_verify_catches_counts_that_disagree_with_dropped_masks(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr", version=1)  # counts stored
    encode_tasks(path, drop_masks=True)
    store = MaskStore.open(path, writable=True)
    counts = store.mask_counts().copy()
    slot = next(i for i in (0, 1) if np.array_equal(store.arrays["mask_counts"][i], counts))
    counts[5] += 1
    store.arrays["mask_counts"][slot] = counts
    assert any("mask_counts" in p for p in MaskStore.open(path).verify())


# -- recovery ---------------------------------------------------------------------------------
def test_recovery_snaps_onto_the_nearest_stored_pattern(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr", tasks=3, seed=4)
    encode_tasks(path)
    memory = load_memory(MaskStore.open(path))
    target = memory.patterns[1]
    start = torch.from_numpy(target.astype(np.float32) * 2 - 1)
    start[:6] = -start[:6]  # six wrong bits
    memory = type(memory)(**{**memory.__dict__, "start": start * 0.1})
    x = load_task("split:1").test_x[:32]
    found = recover_batch(memory, x, config=RecoveryConfig(steps=10, gamma=10.0))
    assert found.matched == 1 and found.distances[1] == 0
    pattern = torch.from_numpy(target.astype(np.float32) * 2 - 1)
    assert found.energy == pytest.approx(energy(memory.psi, pattern).item())
    assert set(found.predictions.tolist()) <= {2, 3}, "a matched task classifies over its classes"


def test_the_mask_with_the_lowest_entropy_wins(tmp_path: Path) -> None:
    """Candidates (minima of E) compete with the descent's mask: the lowest H on the batch wins,
    and the answer says where it came from."""
    path = tiny_store(tmp_path / "s.zarr", tasks=3, seed=2)
    encode_tasks(path)
    memory = load_memory(MaskStore.open(path), starts=64)
    assert memory.candidates is not None and 1 <= len(memory.candidates) <= 6
    stored = {tuple(p.tolist()) for p in memory.patterns.values()}
    assert stored <= {tuple(c.tolist()) for c in memory.candidates}, "Psi alone gives them back"
    x = load_task("split:1").test_x[:32]
    config = RecoveryConfig(steps=2, gamma=0.0, settle=False)
    descent_only = recover_batch(replace(memory, candidates=None), x, config=config)
    found = recover_batch(memory, x, config=config)
    options = [torch.from_numpy(descent_only.mask_bits), *memory.candidates]
    values = [batch_entropy(memory, x, m) for m in options]
    assert found.mask_bits.tolist() == options[int(np.argmin(values))].tolist()
    assert found.chosen_from == ("descent" if int(np.argmin(values)) == 0 else "minimum")
    assert descent_only.chosen_from == "descent"


def test_recovery_config_and_batches_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        RecoveryConfig(steps=0)
    with pytest.raises(ConfigError):
        RecoveryConfig(gamma=-1.0)
    with pytest.raises(ConfigError):
        RecoveryConfig(starts=-1)
    path = tiny_store(tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match="hopfield-encode"):
        recover_batches(path, torch.zeros(4, 784))
    encode_tasks(path)
    found = recover_batches(path, torch.randn(9, 784), batch_size=4, config=RecoveryConfig(steps=2))
    assert [r.first for r in found] == [0, 4], "a last batch of one joins the one before"
    assert sum(len(r.predictions) for r in found) == 9


# -- the real network, trained -----------------------------------------------------------------


def test_cli_encode_info_infer_on_the_real_network(split_bn_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    shutil.copytree(split_bn_store, path)
    result = runner.invoke(app, ["hopfield-encode", str(path), "--tasks", "0-1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "store": str(path),
        "encoded": [0, 1],
        "tasks": [0, 1],
        "dropped": [],
        "d": 4096,
        "psi_bytes": 67_108_864,
    }
    again = runner.invoke(app, ["hopfield-encode", str(path), "--tasks", "1"])
    assert again.exit_code == 2 and "twice" in again.stderr
    info = runner.invoke(app, ["info", str(path)])
    assert "2 task(s) encoded" in info.stdout and "67,108,864 bytes" in info.stdout
    scored = runner.invoke(
        app,
        [
            "infer",
            str(path),
            "--method",
            "hopfield",
            "--data",
            "split:1",
            "--steps",
            "3",
            "--batch",
            "100",
            "--json",
        ],
    )
    assert scored.exit_code == 0, scored.output
    summary = json.loads(scored.stdout)
    (spec,) = summary["specs"]
    assert spec["data"] == "split:1" and spec["true_tasks"] == [1]
    assert [b["images"] for b in spec["batches"]] == [100, spec["images"] - 100]
    assert set(spec["batches"][0]["hamming"]) == {"0", "1"}
    assert summary["steps"] == 3 and 0 <= summary["class_accuracy"] <= 1


def test_cli_drop_masks_then_infer_images(split_bn_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    shutil.copytree(split_bn_store, path)
    result = runner.invoke(app, ["hopfield-encode", str(path), "--drop-masks"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["verify", str(path)]).exit_code == 0
    assert "masks dropped" in runner.invoke(app, ["info", str(path)]).stdout
    images = tmp_path / "digits.npy"
    np.save(images, (load_task("split:1").test_x[:6].reshape(6, 28, 28) * 0.3081 + 0.1307).numpy())
    inferred = runner.invoke(
        app, ["infer", str(path), str(images), "--method", "hopfield", "--steps", "3"]
    )
    assert inferred.exit_code == 0, inferred.output
    lines = [json.loads(line) for line in inferred.stdout.splitlines()]
    assert len(lines) == 6 and {line["batch"] for line in lines} == {0}
    assert all(line["task"] in (None, 0, 1) for line in lines)


def test_cli_infer_hopfield_refuses_per_image_and_g(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    encode_tasks(path)
    for extra in (["--per", "image"], ["--objective", "G"]):
        result = runner.invoke(
            app, ["infer", str(path), "--method", "hopfield", "--data", "split:0", *extra]
        )
        assert result.exit_code == 2 and "one mask per batch" in result.stderr


def test_cli_bad_task_list(tmp_path: Path) -> None:
    path = tiny_store(tmp_path / "s.zarr")
    result = runner.invoke(app, ["hopfield-encode", str(path), "--tasks", "3-1"])
    assert result.exit_code == 2 and "backwards" in result.stderr
    result = runner.invoke(app, ["hopfield-encode", str(path), "--tasks", "a"])
    assert result.exit_code == 2 and "0-4" in result.stderr


def test_example_script_runs(tmp_path: Path) -> None:
    """examples/split-mnist-hopfield.sh as a user runs it, at a tiny size (2 tasks, 2 steps)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "split-mnist-hopfield.sh"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(example), "h.zarr", "5", "2", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "ok h.zarr" in result.stdout and "masks dropped" in result.stdout
    assert "split:0: " in result.stdout and "split:1: " in result.stdout
