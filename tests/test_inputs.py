"""Reading unlabelled images: folders, single images, .npy arrays, stdin paths, bad files."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supsup_cli.errors import InputError
from supsup_cli.learn.data import normalise
from supsup_cli.learn.inputs import read_inputs


def digits(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)


def write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"digit-{index:02d}.png"
        Image.fromarray(image, mode="L").save(path)
        paths.append(path)
    return paths


def test_folder_of_pngs_is_normalised_as_in_training(tmp_path) -> None:
    images = digits(3)
    paths = write_pngs(tmp_path / "shots", images)
    (tmp_path / "shots" / "notes.txt").write_text("not an image")  # ignored in a folder
    got = read_inputs(str(tmp_path / "shots"))
    assert got.names == tuple(str(p) for p in paths)
    assert torch.equal(got.x, normalise(images))


def test_rgb_jpeg_and_other_sizes_become_grey_28x28(tmp_path) -> None:
    colour = np.zeros((56, 40, 3), dtype=np.uint8)
    colour[..., 1] = 200
    Image.fromarray(colour, mode="RGB").save(tmp_path / "big.JPG", quality=95)
    got = read_inputs(str(tmp_path / "big.JPG"))
    assert got.x.shape == (1, 784)
    grey = np.array(Image.open(tmp_path / "big.JPG").convert("L").resize((28, 28)))
    assert torch.allclose(got.x, normalise(grey[None]), atol=0.05)


def test_npy_arrays_uint8_float_and_flat(tmp_path) -> None:
    images = digits(4, seed=1)
    np.save(tmp_path / "u8.npy", images)
    np.save(tmp_path / "f.npy", images.astype(np.float32) / 255)
    np.save(tmp_path / "flat.npy", images.reshape(4, 784))
    for name in ("u8.npy", "f.npy", "flat.npy"):
        got = read_inputs(str(tmp_path / name))
        assert got.names == tuple(f"{tmp_path / name}[{i}]" for i in range(4))
        assert torch.allclose(got.x, normalise(images), atol=1e-5)
    np.save(tmp_path / "one.npy", images[2])  # a single (28, 28) image
    one = read_inputs(str(tmp_path / "one.npy"))
    assert one.names == (f"{tmp_path / 'one.npy'}[0]",)
    assert torch.allclose(one.x, normalise(images[2:3]), atol=1e-5)


def test_paths_from_stdin(tmp_path) -> None:
    paths = write_pngs(tmp_path, digits(2, seed=2))
    np.save(tmp_path / "more.npy", digits(3, seed=3))
    listing = io.StringIO(f"{paths[1]}\n\n{tmp_path / 'more.npy'}\n{paths[0]}\n")
    got = read_inputs("-", stdin=listing)
    assert len(got.names) == 5 and got.names[0] == str(paths[1])
    assert got.names[1] == f"{tmp_path / 'more.npy'}[0]" and got.names[-1] == str(paths[0])


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    bad = {
        "corrupt png": tmp_path / "broken.png",
        "wrong shape": tmp_path / "shape.npy",
        "float range": tmp_path / "range.npy",
        "int dtype": tmp_path / "ints.npy",
        "pickled": tmp_path / "objects.npy",
        "bad npy header": tmp_path / "header.npy",
        "not an image": tmp_path / "notes.txt",
        "missing": tmp_path / "gone.png",
    }
    bad["corrupt png"].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    np.save(bad["wrong shape"], np.zeros((2, 27, 28), dtype=np.uint8))
    np.save(bad["float range"], np.full((1, 28, 28), 255.0, dtype=np.float32))
    np.save(bad["int dtype"], np.zeros((1, 28, 28), dtype=np.int64))
    bad["pickled"].write_bytes(pickle.dumps([1, 2]))
    bad["bad npy header"].write_bytes(b"\x93NUMPY garbage")
    bad["not an image"].write_text("hello")
    return bad


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("corrupt png", "cannot read the image"),
        ("wrong shape", r"expected an array of shape \(n, 28, 28\)"),
        ("float range", r"finite values in \[0, 1\]"),
        ("int dtype", "uint8 or float"),
        ("pickled", r"not a \.npy array file \(no NumPy header\)"),  # no advice to unpickle
        ("bad npy header", "cannot read the array"),
        ("not an image", "not a PNG, JPEG or .npy"),
        ("missing", "no such file"),
    ],
)
def test_each_bad_input_is_one_error_naming_the_file(tmp_path, kind, message) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(InputError, match=message) as caught:
        read_inputs(str(path))
    assert str(path) in str(caught.value)
    with pytest.raises(InputError, match=message):  # the same through stdin
        read_inputs("-", stdin=io.StringIO(f"{path}\n"))


def test_skip_bad_reports_and_goes_on(tmp_path) -> None:
    good = write_pngs(tmp_path / "good", digits(2, seed=4))
    (tmp_path / "bad").mkdir()
    bad = _bad_files(tmp_path / "bad")
    listing = "\n".join(str(p) for p in [good[0], *bad.values(), good[1]])
    skipped: list[tuple[str, str]] = []
    got = read_inputs(
        "-",
        stdin=io.StringIO(listing),
        skip_bad=True,
        on_skip=lambda name, why: skipped.append((name, why)),
    )
    assert got.names == (str(good[0]), str(good[1]))
    assert [name for name, _ in skipped] == [str(p) for p in bad.values()]
    with pytest.raises(InputError, match="no readable images"):
        read_inputs(str(bad["corrupt png"]), skip_bad=True)


def test_empty_sources_are_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no PNG or JPEG files in the folder$"):
        read_inputs(str(tmp_path / "empty"))
    (tmp_path / "tree" / "cats").mkdir(parents=True)  # an ImageFolder tree: a hint, no guess
    with pytest.raises(InputError, match=r"holds folders: give one, e\.g\. .*tree/cats\)$"):
        read_inputs(str(tmp_path / "tree"))
    with pytest.raises(InputError, match="no paths on stdin"):
        read_inputs("-", stdin=io.StringIO("\n \n"))
    with pytest.raises(InputError, match="no stdin"):
        read_inputs("-")
