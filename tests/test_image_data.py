"""Image data sets on disk: CIFAR-100's binary version (generated here), ImageFolder trees of
PNGs, a tiny ImageNet-style tree; and unlabelled RGB or greyscale images and arrays read at the
store's input shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import DataSpecError, InputError
from supsup_cli.learn.data import CIFAR100_MEAN, CIFAR100_STD, load_task, normalise_images
from supsup_cli.learn.image_data import CIFAR_RECORD, augment
from supsup_cli.learn.inputs import read_inputs

runner = CliRunner()


def write_cifar_binary(root: Path, per_class: int, seed: int) -> dict[str, np.ndarray]:
    """train.bin and test.bin of random images, `per_class` of each of the 100 classes."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    written = {}
    for name in ("train", "test"):
        fine = np.repeat(np.arange(100, dtype=np.uint8), per_class)
        records = np.zeros((len(fine), CIFAR_RECORD), dtype=np.uint8)
        records[:, 0] = fine // 5
        records[:, 1] = fine
        records[:, 2:] = rng.integers(0, 256, (len(fine), CIFAR_RECORD - 2), dtype=np.uint8)
        records.tofile(folder / f"{name}.bin")
        written[name] = records
    return written


def test_splitcifar100_reads_the_binary_version(tmp_path: Path) -> None:
    written = write_cifar_binary(tmp_path, per_class=3, seed=0)
    data = load_task("splitcifar100:2", tmp_path, (3, 32, 32))
    assert data.classes == (10, 11, 12, 13, 14) and data.augment
    assert data.train_y.tolist() == [10] * 3 + [11] * 3 + [12] * 3 + [13] * 3 + [14] * 3
    first = written["train"][30, 2:].reshape(1, 3, 32, 32)  # the first image of class 10
    assert torch.equal(data.train_x[:1], normalise_images(first))
    mean = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
    expected = (torch.from_numpy(first[0]).float() / 255 - mean) / torch.tensor(CIFAR100_STD).view(
        3, 1, 1
    )
    assert torch.allclose(data.train_x[0], expected.flatten(), atol=1e-6)
    assert len(data.test_y) == 15


def test_a_truncated_cifar_file_is_refused_in_one_line(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, per_class=1, seed=1)
    train = tmp_path / "cifar-100-binary" / "train.bin"
    train.write_bytes(train.read_bytes()[:-100])
    with pytest.raises(DataSpecError, match="not a whole number") as error:
        load_task("splitcifar100:0", tmp_path, (3, 32, 32))
    assert "\n" not in str(error.value)


def test_a_missing_data_set_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataSpecError, match="cifar-100-binary"):
        load_task("splitcifar100:1", tmp_path, (3, 32, 32))


def write_tree(root: Path, classes: dict[str, int], mode: str, size: int) -> None:
    rng = np.random.default_rng(len(classes))
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            channels = 3 if mode == "RGB" else 1
            pixels = rng.integers(0, 256, (size, size + 3, channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(
                root / name / f"{index:03d}.png"
            )


def test_folder_reads_a_tree_of_pngs_resized_with_sorted_classes(tmp_path: Path) -> None:
    write_tree(tmp_path / "tree", {"zebra": 5, "apple": 10}, "RGB", size=20)
    data = load_task(f"folder:{tmp_path / 'tree'}", None, (3, 32, 32))
    assert data.class_names == ("apple", "zebra") and data.classes == (0, 1)
    assert data.train_x.shape == (12, 3 * 32 * 32) and data.test_x.shape == (3, 3 * 32 * 32)
    assert data.train_y.tolist() == [0] * 8 + [1] * 4
    (tmp_path / "tree" / "apple" / "bad.png").write_text("not an image")
    with pytest.raises(DataSpecError, match="bad.png"):
        load_task(f"folder:{tmp_path / 'tree'}", None, (1, 28, 28))
    skipping = load_task(f"folder:{tmp_path / 'tree'}", None, (1, 28, 28), skip_bad=True)
    assert skipping.skipped == (str(tmp_path / "tree" / "apple" / "bad.png"),)
    assert skipping.train_x.shape == (12, 784)


def test_splitimagenet_on_a_tiny_tree(tmp_path: Path) -> None:
    classes = {f"n{index:04d}": 2 for index in range(20)}
    write_tree(tmp_path / "train", classes, "RGB", size=40)
    write_tree(tmp_path / "val", classes, "RGB", size=40)
    data = load_task("splitimagenet:1", tmp_path, (3, 32, 32))
    assert data.classes == tuple(range(10, 20))
    assert sorted(set(data.test_y.tolist())) == list(range(10, 20))
    with pytest.raises(DataSpecError, match="needs classes 20..29"):
        load_task("splitimagenet:2", tmp_path, (3, 32, 32))


def test_augmentation_crops_and_flips_but_keeps_the_shape() -> None:
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, -1)
    out = augment(x, (3, 32, 32), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)


def test_augmentation_is_each_images_padded_crop_flipped_or_not() -> None:
    """The batched gathers equal cropping and flipping image by image with the same draws."""
    count, shape = 64, (3, 12, 10)
    x = torch.randn(count, 3 * 12 * 10)
    out = augment(x, shape, torch.Generator().manual_seed(5)).reshape(count, *shape)
    draws = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 9, (count, 2), generator=draws)
    flips = torch.rand(count, generator=draws) < 0.5
    padded = torch.nn.functional.pad(x.reshape(count, *shape), (4, 4, 4, 4))
    for index, ((top, left), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        crop = padded[index, :, top : top + 12, left : left + 10]
        assert torch.equal(out[index], crop.flip(-1) if flip else crop)
    assert 0 < int(flips.sum()) < count and len(set(map(tuple, offsets.tolist()))) > 1


def test_rgb_and_greyscale_images_are_read_at_the_stores_shape(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "grey.png")
    as_rgb = read_inputs(str(tmp_path), (3, 32, 32))
    assert as_rgb.names == (str(tmp_path / "grey.png"), str(tmp_path / "rgb.png"))
    assert as_rgb.x.shape == (2, 3 * 32 * 32)
    grey_as_rgb = as_rgb.x[0].reshape(3, 32, 32) * torch.tensor(CIFAR100_STD).view(3, 1, 1)
    grey_as_rgb += torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
    assert torch.allclose(grey_as_rgb[0], grey_as_rgb[1], atol=1e-5)  # grey: equal channels
    as_grey = read_inputs(str(tmp_path / "rgb.png"), (1, 28, 28))
    assert as_grey.x.shape == (1, 784)


def test_arrays_are_nchw_or_nhwc_by_their_shape_never_guessed(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "nchw.npy", images)
    np.save(tmp_path / "nhwc.npy", images.transpose(0, 2, 3, 1))
    nchw = read_inputs(str(tmp_path / "nchw.npy"), (3, 32, 32))
    nhwc = read_inputs(str(tmp_path / "nhwc.npy"), (3, 32, 32))
    assert torch.equal(nchw.x, nhwc.x)
    assert torch.equal(nchw.x, normalise_images(images))
    np.save(tmp_path / "wrong.npy", images[:, :, :16])
    with pytest.raises(InputError, match=r"\(n, 3, 32, 32\) or \(n, 32, 32, 3\)"):
        read_inputs(str(tmp_path / "wrong.npy"), (3, 32, 32))


def test_a_conv_store_trains_on_a_folder_and_infers_rgb_images(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, {"a": 10, "b": 10}, "RGB", size=12)
    store = tmp_path / "conv.zarr"
    trained = runner.invoke(
        app,
        ["train-task", str(store), "--data", f"folder:{tree}", "--arch", "resnet18-gem"]
        + ["--batches", "2", "--batch-size", "8", "--optimizer", "adam", "--lr", "1e-3"],
    )
    assert trained.exit_code == 0, trained.output
    info = runner.invoke(app, ["info", str(store)])
    assert "resnet18-gem (3x32x32 inputs)" in info.stdout
    assert "+ 12,000 bytes of BatchNorm statistics" in info.stdout
    inferred = runner.invoke(app, ["infer", str(store), str(tree / "a")])
    assert inferred.exit_code == 0, inferred.output
    assert inferred.stdout.count('"task": 0') == 10
    assert "own statistics" in inferred.stderr


def test_a_seeded_class_order_splits_cifar_differently(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, per_class=1, seed=2)
    seeded = load_task("splitcifar100:0@seed:3", tmp_path, (3, 32, 32))
    order = np.random.RandomState(3).permutation(100)[:5]
    assert seeded.classes == tuple(sorted(order.tolist())) != tuple(range(5))
    assert sorted(seeded.train_y.tolist()) == sorted(order.tolist())
    store = tmp_path / "c.zarr"
    args = ["train-task", str(store), "--data", "splitcifar100:1", "--class-order", "seed:3"]
    args += ["--data-root", str(tmp_path), "--arch", "resnet18-gem", "--outputs", "100"]
    trained = runner.invoke(app, [*args, "--batches", "1", "--batch-size", "4", "--json"])
    assert trained.exit_code == 0, trained.output
    assert '"data": "splitcifar100:1@seed:3"' in trained.stdout
    evaluated = runner.invoke(
        app, ["eval", str(store), "--data-root", str(tmp_path), "--json"]
    )  # offline: the report names the CIFAR root, and no MNIST is looked for there
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["settings"]["data_source"] == f"disk:{tmp_path.resolve()}"
    assert report["tasks"][0]["data"] == "splitcifar100:1@seed:3"


def test_a_splitcifar100_store_gets_the_reference_network_and_all_100_classes(
    tmp_path: Path,
) -> None:
    """The issue's loop names --arch once and --outputs never: task 2 (classes 10..14) and the
    last task (95..99) must fit the store the first task made."""
    write_cifar_binary(tmp_path, per_class=1, seed=3)
    store = tmp_path / "c100.zarr"
    for task in (0, 2, 19):
        trained = runner.invoke(
            app,
            ["train-task", str(store), "--data", f"splitcifar100:{task}"]
            + ["--data-root", str(tmp_path), "--batches", "1", "--batch-size", "4", "--json"],
        )
        assert trained.exit_code == 0, trained.output
        record = json.loads(trained.stdout)
        assert record["classes"] == list(range(5 * task, 5 * task + 5))
        assert (record["train"]["optimizer"], record["train"]["lr"]) == ("adam", 1e-3)
    info = runner.invoke(app, ["info", str(store)])
    assert "network resnet18-gem (3x32x32 inputs), 100 outputs" in info.stdout
    evaluated = runner.invoke(
        app, ["eval", str(store), "--data-root", str(tmp_path), "--json"]
    )  # data on disk have one source: each task is compared with its accuracy at training
    assert evaluated.exit_code == 0, evaluated.output
    forgetting = json.loads(evaluated.stdout)["summary"]["forgetting_vs_training"]
    assert forgetting["tasks_compared"] == 3 and forgetting["max"] == 0.0
    digits = runner.invoke(
        app, ["train-task", str(tmp_path / "d.zarr"), "--data", "split:4", "--batches", "1"]
    )
    assert digits.exit_code == 0, digits.output
    assert (
        "lenet-300-100 (1x28x28 inputs), 10 outputs"
        in runner.invoke(app, ["info", str(tmp_path / "d.zarr")]).stdout
    )


def test_data_of_the_wrong_shape_names_a_network_that_takes_it(tmp_path: Path) -> None:
    write_cifar_binary(tmp_path, per_class=1, seed=4)
    with pytest.raises(DataSpecError, match=r"takes 1x28x28 \(a store for them: --arch resnet18"):
        load_task("splitcifar100:0", tmp_path, (1, 28, 28))
    with pytest.raises(DataSpecError, match=r"takes 3x32x32 images \(.*--arch conv4\)"):
        load_task("split:0", None, (3, 32, 32))
