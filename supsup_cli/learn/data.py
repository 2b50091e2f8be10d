"""Data specs (`permuted:17`, `rotated:30`, `split:2`) and the image sources behind them.

The default source is the embedded 5,000 real MNIST digits (assets/README.md), shuffled with a
fixed seed and split 4,000 train / 1,000 test; `--data-root DIR` uses torchvision's full MNIST.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np
import torch

from ..errors import DataSpecError
from ..format.architectures import DIGITS_SHAPE

MNIST_MEAN: Final = 0.1307
MNIST_STD: Final = 0.3081
CIFAR100_MEAN: Final = (0.5071, 0.4865, 0.4409)  # per channel, of the training split
CIFAR100_STD: Final = (0.2673, 0.2564, 0.2762)
EMBEDDED_TRAIN: Final = 4_000
EMBEDDED_SPLIT_SEED: Final = 0
PERMUTATION_TAG: Final = 0x5045524D  # "PERM": keeps permutation streams apart from weight streams
MAX_PERMUTATION_SEED: Final = 2**63 - 1
SPLIT_TASKS: Final = 5


@dataclass(frozen=True)
class ImageSource:
    """Raw digits: uint8 images (n, 28, 28) and int64 labels, for train and test."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class TaskData:
    """One task's normalised, transformed data: x (n, C*H*W) float32, y (n,) int64; `augment`:
    training batches get random crops and flips (CIFAR); `class_names`: of a folder tree."""

    spec: str
    classes: tuple[int, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    shape: tuple[int, int, int] = DIGITS_SHAPE
    augment: bool = False
    class_names: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # unreadable images left out (--skip-bad)


@functools.cache
def embedded_source() -> ImageSource:
    """The 5,000 embedded MNIST digits, shuffled with a fixed seed, 4,000 train / 1,000 test."""
    with resources.files("supsup_cli.assets").joinpath("mnist-5k.npz").open("rb") as handle:
        with np.load(handle, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"].astype(np.int64)
    order = np.random.Generator(np.random.PCG64(EMBEDDED_SPLIT_SEED)).permutation(len(labels))
    images, labels = images[order], labels[order]
    train, test = slice(0, EMBEDDED_TRAIN), slice(EMBEDDED_TRAIN, None)
    return ImageSource(
        "embedded-mnist-5k", images[train], labels[train], images[test], labels[test]
    )


@functools.cache
def torchvision_source(root: Path) -> ImageSource:
    """torchvision's MNIST (60,000 / 10,000) under `root`, downloaded there if absent and online."""
    from torchvision.datasets import MNIST

    def split(train: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            dataset = MNIST(str(root), train=train, download=False)
        except RuntimeError:
            try:
                dataset = MNIST(str(root), train=train, download=True)
            except Exception as error:  # no network, unwritable root, ...
                raise DataSpecError(
                    f"MNIST not found under {root} and could not be downloaded ({error})"
                ) from error
        return dataset.data.numpy(), dataset.targets.numpy().astype(np.int64)

    (train_x, train_y), (test_x, test_y) = split(True), split(False)
    return ImageSource(f"torchvision-mnist:{root}", train_x, train_y, test_x, test_y)


def image_source(data_root: Path | None) -> ImageSource:
    """The embedded digits, or torchvision's MNIST when the user names a root."""
    return embedded_source() if data_root is None else torchvision_source(Path(data_root).resolve())


def normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (n, 28, 28) or float in [0, 1] -> float32 (n, 784), MNIST mean/std normalised."""
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return ((x - MNIST_MEAN) / MNIST_STD).reshape(len(x), -1)


def normalise_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (n, C, H, W) or float in [0, 1] -> float32 (n, C*H*W), normalised as the training
    data of that many channels: greyscale by MNIST's mean/std, RGB by CIFAR-100's per channel."""
    x = torch.as_tensor(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[1] == 1:
        return ((x - MNIST_MEAN) / MNIST_STD).reshape(len(x), -1)
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).reshape(len(x), -1)


def pixel_permutation(seed: int) -> torch.Tensor:
    """The pixel order of `permuted:seed`: argsort of 784 raw Philox words (0 is the identity)."""
    if seed == 0:
        return torch.arange(784)
    words = np.random.Philox(np.random.SeedSequence([seed, PERMUTATION_TAG])).random_raw(784)
    return torch.from_numpy(np.argsort(words, kind="stable"))


@dataclass(frozen=True)
class SpecKind:
    """One form of data spec: how to parse its argument and build its task."""

    name: str
    form: str
    pattern: str
    build: Callable[
        [ImageSource, str],
        tuple[
            tuple[int, ...], Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]
        ],
    ]


def _permuted(source: ImageSource, argument: str):  # noqa: ARG001
    seed = int(argument)
    if seed > MAX_PERMUTATION_SEED:
        raise DataSpecError(f"permutation seed must be at most {MAX_PERMUTATION_SEED}")
    order = pixel_permutation(seed)

    def transform(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return normalise(images)[:, order], torch.as_tensor(labels)

    return tuple(range(10)), transform


def _rotated(source: ImageSource, argument: str):  # noqa: ARG001
    from torchvision.transforms.functional import InterpolationMode, rotate

    degrees = float(argument)

    def transform(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(images).float().unsqueeze(1) / 255.0  # (n, 1, 28, 28)
        x = rotate(x, degrees, interpolation=InterpolationMode.BILINEAR, fill=[0.0])
        return normalise(x.squeeze(1)), torch.as_tensor(labels)

    return tuple(range(10)), transform


def _split(source: ImageSource, argument: str):  # noqa: ARG001
    index = int(argument)
    if not 0 <= index < SPLIT_TASKS:
        raise DataSpecError(
            f"split:I takes I in 0..{SPLIT_TASKS - 1} (digits 2I and 2I+1), got {index}"
        )
    classes = (2 * index, 2 * index + 1)

    def transform(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        keep = np.isin(labels, classes)
        return normalise(images[keep]), torch.as_tensor(labels[keep])

    return classes, transform


SPEC_KINDS: Final = {
    kind.name: kind
    for kind in (
        SpecKind(
            "permuted",
            "permuted:N (pixel permutation from seed N >= 0; 0 is the identity)",
            r"\d+",
            _permuted,
        ),
        SpecKind(
            "rotated", "rotated:DEG (images rotated by DEG degrees)", r"-?\d+(\.\d+)?", _rotated
        ),
        SpecKind(
            "split", f"split:I (digits 2I and 2I+1, I in 0..{SPLIT_TASKS - 1})", r"\d+", _split
        ),
    )
}


# Image data sets on disk (learn/image_data.py): kind -> (form, argument pattern).
DISK_KINDS: Final = {
    "splitcifar100": (
        "splitcifar100:I (CIFAR-100 classes 5I..5I+4 from --data-root, I in 0..19; "
        "splitcifar100:I@seed:N for the classes in a random order from seed N)",
        r"\d+(@seed:\d+)?",
    ),
    "splitimagenet": (
        "splitimagenet:I (classes 10I..10I+9 of an ImageNet tree at --data-root)",
        r"\d+",
    ),
    "folder": ("folder:PATH (an ImageFolder tree: one subfolder per class)", r"[^,]+"),
}


def valid_forms() -> str:
    forms = [kind.form for kind in SPEC_KINDS.values()]
    return "; ".join(forms + [form for form, _ in DISK_KINDS.values()])


def canonical_spec(spec: str) -> tuple[str, str]:
    """Validate a spec's syntax; return (kind, argument) or raise one helpful DataSpecError."""
    kind_name, _, argument = spec.strip().partition(":")
    kind = SPEC_KINDS.get(kind_name)
    pattern = kind.pattern if kind is not None else DISK_KINDS.get(kind_name, ("", None))[1]
    if pattern is None or not re.fullmatch(pattern, argument):
        raise DataSpecError(f"invalid data spec {spec!r}; valid forms: {valid_forms()}")
    return kind_name, argument


@functools.lru_cache(maxsize=8)
def load_task(
    spec: str,
    data_root: Path | None = None,
    shape: tuple[int, int, int] = DIGITS_SHAPE,
    skip_bad: bool = False,
) -> TaskData:
    """Build one task's train and test tensors from its spec, as images of `shape` (the
    network's input shape: the digits are 1x28x28 only, a folder tree is resized to it)."""
    kind_name, argument = canonical_spec(spec)
    if kind_name in DISK_KINDS:
        from .image_data import load_disk_task

        return load_disk_task(kind_name, argument, data_root, shape, skip_bad)
    if shape != DIGITS_SHAPE:
        raise DataSpecError(
            f"{spec} gives 1x28x28 digits; the network takes {'x'.join(map(str, shape))} images "
            "(a store for them: an MLP or --arch conv4)"
        )
    source = image_source(data_root)
    classes, transform = SPEC_KINDS[kind_name].build(source, argument)
    train_x, train_y = transform(source.train_images, source.train_labels)
    test_x, test_y = transform(source.test_images, source.test_labels)
    return TaskData(f"{kind_name}:{argument}", classes, train_x, train_y, test_x, test_y)


# A task made by `supsup masks merge` from earlier tasks (`merge:0,1:and`): it has no data of its
# own and is tested on the test images of the tasks it came from.
MERGE_SPEC: Final = re.compile(r"merge:(\d+(?:,\d+)+):(\w+)")


def merge_spec(parents: Sequence[int], rule: str) -> str:
    """The data spec recorded for a merged task (what `merge_parents` reads back)."""
    return f"merge:{','.join(map(str, parents))}:{rule}"


def merge_parents(spec: str) -> tuple[int, ...] | None:
    """The tasks a merged task came from, or None for the spec of real data."""
    match = MERGE_SPEC.fullmatch(spec)
    return None if match is None else tuple(int(t) for t in match[1].split(","))


def source_specs(stored: Sequence[str], task: int) -> tuple[str, ...]:
    """The data specs whose test images test stored task `task` (`stored`: every task's spec, by
    index): its own, or for a merged task those of the tasks it came from, merges of merges
    followed down, each spec once, in order. Each task is visited once, however they nest."""
    found: dict[str, None] = {}
    seen: set[int] = set()
    pending = [task]
    while pending:
        index = pending.pop()
        if index in seen:
            continue
        seen.add(index)
        parents = merge_parents(stored[index])
        if parents is None:
            found[stored[index]] = None
            continue
        if not all(0 <= parent < index for parent in parents):
            raise DataSpecError(
                f"task {index} ({stored[index]}) is a merge of tasks that do not precede it"
            )
        pending.extend(reversed(parents))
    return tuple(found)


@dataclass(frozen=True)
class EvalData:
    """Test images of one or more specs, one after another: x (n, 784) float32, y (n,) int64;
    `spec` names them (`permuted:1+permuted:2`), `classes` are all of theirs."""

    spec: str
    classes: tuple[int, ...]
    x: torch.Tensor
    y: torch.Tensor


def load_eval_data(
    specs: Sequence[str], data_root: Path | None = None, shape: tuple[int, int, int] = DIGITS_SHAPE
) -> EvalData:
    """The test split of each spec, concatenated (a merged task is tested on all its sources)."""
    parts = [load_task(spec, data_root, shape) for spec in specs]
    if len(parts) == 1:
        return EvalData(parts[0].spec, parts[0].classes, parts[0].test_x, parts[0].test_y)
    return EvalData(
        "+".join(part.spec for part in parts),
        tuple(sorted({c for part in parts for c in part.classes})),
        torch.cat([part.test_x for part in parts]),
        torch.cat([part.test_y for part in parts]),
    )


MAX_SPEC_LIST: Final = 100_000
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?::(\d+))?")
_KIND = re.compile(r"[A-Za-z_][\w-]*")


def spec_items(text: str) -> list[str]:
    """A spec list's comma items, each with its kind spelled out (`permuted:1..3,7` ->
    `permuted:1..3`, `permuted:7`): an item without `kind:` keeps the previous item's kind, and an
    item without any kind stays as it is (expanding it says so). Nothing else is checked here."""
    items: list[str] = []
    kind = ""
    for raw in text.split(","):
        item = raw.strip()
        head, colon, rest = item.partition(":")
        if colon and _KIND.fullmatch(head.strip()):
            kind, item = head.strip(), rest.strip()
        items.append(f"{kind}:{item}" if kind and raw.strip() else item)
    return items


def expand_specs(text: str) -> list[str]:
    """A spec list -> single specs, in order: `permuted:1..250`, `permuted:1,3,5`,
    `rotated:0..350:10` (step 10), `split:0,permuted:4`. An item without `kind:` keeps the
    previous item's kind; ranges are inclusive integer ranges with an optional positive step."""
    specs: list[str] = []
    for full in spec_items(text):
        if not full:
            raise DataSpecError(f"empty item in the data spec list {text!r}")
        kind, colon, item = full.partition(":")
        if not colon or not _KIND.fullmatch(kind):
            raise DataSpecError(f"{full!r} in {text!r} has no kind; valid forms: {valid_forms()}")
        match = _RANGE.fullmatch(item)
        if match is None:
            specs.append("{}:{}".format(*canonical_spec(full)))
            continue
        start, stop, step = int(match[1]), int(match[2]), int(match[3] or 1)
        if step < 1 or stop < start:
            raise DataSpecError(
                f"range {item!r} must go up with a step >= 1 (e.g. 1..250 or 0..350:10)"
            )
        if len(specs) + (stop - start) // step + 1 > MAX_SPEC_LIST:
            raise DataSpecError(f"{text!r} names more than {MAX_SPEC_LIST:,} tasks")
        for value in range(start, stop + 1, step):
            specs.append("{}:{}".format(*canonical_spec(f"{kind}:{value}")))
    return specs
