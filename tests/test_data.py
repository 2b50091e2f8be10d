"""Data specs and the embedded digits."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
import torch

from supsup_cli.errors import DataSpecError
from supsup_cli.learn.data import canonical_spec, load_task, pixel_permutation

EMBEDDED_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"


def test_embedded_digits_are_the_documented_file() -> None:
    data = resources.files("supsup_cli.assets").joinpath("mnist-5k.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == EMBEDDED_SHA256


def test_embedded_split_is_fixed_and_balanced() -> None:
    task = load_task("permuted:0")
    assert task.train_x.shape == (4000, 784) and task.test_x.shape == (1000, 784)
    counts = torch.bincount(task.test_y, minlength=10)
    assert counts.min() > 60, "shuffled before splitting: every digit in the test split"
    assert abs(task.train_x.mean().item()) < 0.05 and abs(task.train_x.std().item() - 1) < 0.1


def test_permutation_is_a_seeded_permutation() -> None:
    assert torch.equal(pixel_permutation(0), torch.arange(784))
    order = pixel_permutation(17)
    assert sorted(order.tolist()) == list(range(784))
    assert torch.equal(order, pixel_permutation(17)) and not torch.equal(
        order, pixel_permutation(18)
    )
    identity, permuted = load_task("permuted:0"), load_task("permuted:17")
    assert torch.equal(permuted.train_x, identity.train_x[:, order])
    assert torch.equal(permuted.train_y, identity.train_y)


def test_split_keeps_two_digits() -> None:
    task = load_task("split:3")
    assert task.classes == (6, 7)
    assert set(task.train_y.unique().tolist()) == {6, 7} and len(task.test_y) > 150


def test_rotation_moves_pixels_but_keeps_labels() -> None:
    upright, rotated = load_task("permuted:0"), load_task("rotated:90")
    assert torch.equal(upright.test_y, rotated.test_y)
    assert not torch.allclose(upright.test_x, rotated.test_x)
    assert torch.allclose(load_task("rotated:0").test_x, upright.test_x, atol=1e-5)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "permuted",
        "permuted:",
        "permuted:-1",
        "permuted:x",
        "split:5",
        "rotated:north",
        "mnist:1",
        "folder",
    ],
)
def test_bad_specs_name_the_valid_forms(spec: str) -> None:
    with pytest.raises(DataSpecError, match="permuted:N|split:I"):
        load_task(spec)


def test_canonical_form() -> None:
    assert canonical_spec(" permuted:17 ") == ("permuted", "17")
