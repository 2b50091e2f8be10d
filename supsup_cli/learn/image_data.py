"""Data specs over image data sets on disk: `splitcifar100:I` (CIFAR-100 in 20 tasks of 5 classes),
`splitimagenet:I` (an ImageNet-style folder tree in 100 tasks of 10 classes) and `folder:PATH`
(any ImageFolder tree: one subfolder per class). Images come as uint8 (n, C, H, W) and leave as
normalised (n, C*H*W) float32, like the digits; training augments CIFAR per batch."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import torch

from ..errors import DataSpecError, InputError
from .data import TaskData, normalise_images
from .inputs import IMAGE_SUFFIXES, read_image

CIFAR_TASKS: Final = 20
CIFAR_CLASSES_PER_TASK: Final = 5
CIFAR_SHAPE: Final = (3, 32, 32)
CIFAR_RECORD: Final = 2 + 3 * 32 * 32  # coarse label, fine label, 3072 pixels (R, G, B planes)
CIFAR_BINARY: Final = "cifar-100-binary"
IMAGENET_TASKS: Final = 100
IMAGENET_CLASSES_PER_TASK: Final = 10
FOLDER_TEST_EVERY: Final = 5  # folder: every 5th image of a class (sorted by name) is a test image
CROP_PADDING: Final = 4

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, y, test x, y


def cifar_classes(task: int, seed: int | None) -> tuple[int, ...]:
    """The fine classes of task `task`: 5I..5I+4, or (seed N) the I-th five of the permutation
    numpy's RandomState(N).permutation(100) gives, sorted."""
    order = np.arange(100) if seed is None else np.random.RandomState(seed).permutation(100)
    chosen = order[task * CIFAR_CLASSES_PER_TASK : (task + 1) * CIFAR_CLASSES_PER_TASK]
    return tuple(sorted(int(c) for c in chosen))


def read_cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One file of the binary version: fixed-size records, read with numpy (never unpickled)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataSpecError(
            f"{path}: {raw.size:,} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-100 "
            "records (truncated or not the binary version)"
        )
    records = raw.reshape(-1, CIFAR_RECORD)
    if records[:, 1].max() >= 100:
        raise DataSpecError(f"{path}: fine labels must be below 100")
    return records[:, 2:].reshape(-1, *CIFAR_SHAPE), records[:, 1].astype(np.int64)


@functools.cache
def cifar100(root: Path) -> Split:
    """CIFAR-100 under `root`: the binary version (cifar-100-binary/train.bin, test.bin) or
    torchvision's (cifar-100-python/, read by torchvision, which checks its checksums)."""
    binary = root / CIFAR_BINARY
    if binary.is_dir():
        train_x, train_y = read_cifar_binary(binary / "train.bin")
        test_x, test_y = read_cifar_binary(binary / "test.bin")
        return train_x, train_y, test_x, test_y
    if not (root / "cifar-100-python").is_dir():
        raise DataSpecError(
            f"CIFAR-100 not found under {root}: put the binary version in {binary}/ (train.bin, "
            "test.bin from https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz) or "
            "torchvision's in cifar-100-python/"
        )
    from torchvision.datasets import CIFAR100

    def split(train: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            dataset = CIFAR100(str(root), train=train, download=False)
        except RuntimeError as error:
            raise DataSpecError(f"CIFAR-100 under {root}: {error}") from error
        images = np.asarray(dataset.data).transpose(0, 3, 1, 2)  # (n, 3, 32, 32)
        return np.ascontiguousarray(images), np.asarray(dataset.targets, dtype=np.int64)

    return (*split(True), *split(False))


def class_folders(root: Path) -> list[Path]:
    """The subfolders of an ImageFolder tree, in sorted order (a class each)."""
    if not root.is_dir():
        raise DataSpecError(f"{root}: no such folder (one subfolder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataSpecError(f"{root}: no class subfolders")
    return folders


def read_folder_images(
    folder: Path, shape: tuple[int, int, int], skipped: list[str] | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Every PNG/JPEG of one class folder (sorted by name), resized to `shape`; a bad image is
    refused with its file named, or (given a `skipped` list) added to that list and left out."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataSpecError(f"{folder}: no PNG or JPEG images")
    images, names = [], []
    for path in files:
        try:
            images.append(read_image(path, shape))
            names.append(path.name)
        except InputError as error:
            if skipped is None:
                raise DataSpecError(str(error)) from error
            skipped.append(str(path))
    if not images:
        raise DataSpecError(f"{folder}: no readable images")
    return images, names


def folder_split(
    folders: Sequence[Path],
    labels: Sequence[int],
    shape: tuple[int, int, int],
    hold_out: bool = True,
    skipped: list[str] | None = None,
) -> Split:
    """Images of the class folders, every FOLDER_TEST_EVERY-th (by name) held out for testing
    (unless `hold_out` is False: the tree has its own test images)."""
    parts: dict[bool, tuple[list[np.ndarray], list[int]]] = {True: ([], []), False: ([], [])}
    for folder, label in zip(folders, labels, strict=True):
        images, _ = read_folder_images(folder, shape, skipped)
        for index, image in enumerate(images):
            test = hold_out and index % FOLDER_TEST_EVERY == FOLDER_TEST_EVERY - 1
            parts[test][0].append(image)
            parts[test][1].append(label)
    if hold_out and not parts[True][0]:
        raise DataSpecError(
            f"{folders[0].parent}: too few images for a test split (every "
            f"{FOLDER_TEST_EVERY}th image of a class is held out)"
        )
    test_x = np.stack(parts[True][0]) if parts[True][0] else np.zeros((0, *shape), np.uint8)
    return (
        np.stack(parts[False][0]),
        np.asarray(parts[False][1], dtype=np.int64),
        test_x,
        np.asarray(parts[True][1], dtype=np.int64),
    )


def imagenet_split(root: Path, task: int, shape: tuple[int, int, int]) -> tuple[Split, list[int]]:
    """Task `task` of an ImageNet-style tree (root/train/<class>/, root/val/<class>/): classes
    10*task .. 10*task + 9 of the sorted class folders, with their global indices as labels."""
    train_folders = class_folders(root / "train")
    first = task * IMAGENET_CLASSES_PER_TASK
    names = [f.name for f in train_folders[first : first + IMAGENET_CLASSES_PER_TASK]]
    if len(names) < IMAGENET_CLASSES_PER_TASK:
        raise DataSpecError(
            f"{root}/train has {len(train_folders)} classes; splitimagenet:{task} needs "
            f"classes {first}..{first + IMAGENET_CLASSES_PER_TASK - 1}"
        )
    labels = list(range(first, first + IMAGENET_CLASSES_PER_TASK))
    folders = [root / "train" / n for n in names]
    train_x, train_y, _, _ = folder_split(folders, labels, shape, hold_out=False)
    tests = [read_folder_images(root / "val" / n, shape)[0] for n in names]
    test_x = np.stack([image for images in tests for image in images])
    test_y = np.repeat(labels, [len(images) for images in tests]).astype(np.int64)
    return (train_x, train_y, test_x, test_y), labels


def augment(
    x: torch.Tensor, shape: tuple[int, int, int], generator: torch.Generator
) -> torch.Tensor:
    """Random crop with zero padding 4 and horizontal flip of each image of a batch (n, C*H*W),
    on the batch's device: two gathers (rows, then flipped or not columns) rather than a loop
    over the images, whose two small copies an image are ~260 kernel launches a batch on a GPU
    (the same time as the loop on the CPU)."""
    count, (channels, height, width) = len(x), shape
    padded = torch.nn.functional.pad(x.reshape(count, *shape), (CROP_PADDING,) * 4)
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (count, 2), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    steps = torch.arange(width)
    rows = offsets[:, :1] + torch.arange(height)  # (n, H): the rows each crop takes
    columns = offsets[:, 1:] + torch.where(flips[:, None], width - 1 - steps, steps)
    rows, columns = rows.to(x.device), columns.to(x.device)
    full_width = width + 2 * CROP_PADDING
    cropped = padded.gather(2, rows[:, None, :, None].expand(count, channels, height, full_width))
    out = cropped.gather(3, columns[:, None, None, :].expand(count, channels, height, width))
    return out.reshape(count, -1)


def load_disk_task(
    kind: str,
    argument: str,
    data_root: Path | None,
    shape: tuple[int, int, int],
    skip_bad: bool = False,
) -> TaskData:
    """One task of a data set on disk, normalised as the network takes it; with `skip_bad`
    unreadable images of a folder tree are left out (and named in the task's `skipped`)."""
    names: tuple[str, ...] = ()
    skipped: list[str] | None = [] if skip_bad else None
    if kind == "folder":
        root = Path(argument).expanduser()
        folders = class_folders(root)
        names = tuple(f.name for f in folders)
        split = folder_split(folders, range(len(folders)), shape, skipped=skipped)
        classes = tuple(range(len(folders)))
    else:
        if data_root is None:
            raise DataSpecError(f"{kind}:{argument} reads its data set from --data-root DIR")
        index, _, order = argument.partition("@seed:")
        root, task = Path(data_root).expanduser().resolve(), int(index)
        if kind == "splitimagenet":
            if not 0 <= task < IMAGENET_TASKS:
                raise DataSpecError(f"splitimagenet:I takes I in 0..{IMAGENET_TASKS - 1}")
            split, labels = imagenet_split(root, task, shape)
            classes = tuple(labels)
        else:
            if not 0 <= task < CIFAR_TASKS:
                raise DataSpecError(f"splitcifar100:I takes I in 0..{CIFAR_TASKS - 1}, got {task}")
            if shape != CIFAR_SHAPE:
                raise DataSpecError(
                    f"CIFAR-100 images are 3x32x32; the network takes {'x'.join(map(str, shape))} "
                    "(a store for them: --arch resnet18-gem, the default for splitcifar100)"
                )
            classes = cifar_classes(task, None if not order else int(order))
            train_x, train_y, test_x, test_y = cifar100(root)
            train, test = np.isin(train_y, classes), np.isin(test_y, classes)
            split = (train_x[train], train_y[train], test_x[test], test_y[test])
    train_x, train_y, test_x, test_y = split
    return TaskData(
        f"{kind}:{argument}",
        classes,
        normalise_images(train_x),
        torch.from_numpy(train_y),
        normalise_images(test_x),
        torch.from_numpy(test_y),
        shape,
        augment=kind == "splitcifar100",
        class_names=names,
        skipped=tuple(skipped or ()),
    )
