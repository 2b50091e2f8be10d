"""Unlabelled images for task inference: a folder or file of PNG/JPEG images, a .npy array, or
paths read from stdin ('-'). Everything becomes the store's input shape (C, H, W): greyscale or
RGB, resized, normalised as in training, flattened to (n, C*H*W) float32."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import numpy as np
import torch
from numpy.lib import format as npy

from ..errors import InputError, one_line
from .data import normalise_images

IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIX: Final = ".npy"
DIGITS: Final = (1, 28, 28)
MAX_IMAGES: Final = 10_000_000

SkipCallback = Callable[[str, str], None]  # (name, reason)


@dataclass(frozen=True)
class Images:
    """Images to query, each with the name it is reported under (a file, or file[index])."""

    names: tuple[str, ...]
    x: torch.Tensor  # (n, C*H*W) float32, normalised


def read_inputs(
    source: str,
    shape: tuple[int, int, int] = DIGITS,
    *,
    stdin: TextIO | None = None,
    skip_bad: bool = False,
    on_skip: SkipCallback | None = None,
) -> Images:
    """Read a folder, an image, a .npy file, or ('-') one path per line from `stdin`, as images
    of `shape` (channels, height, width): the store's input shape.

        An unreadable file is an InputError naming it; with skip_bad it goes to on_skip instead.
    """
    if source == "-":
        if stdin is None:
            raise InputError("'-' reads paths from stdin, but no stdin was given")
        paths = [Path(line.strip()) for line in stdin if line.strip()]
        if not paths:
            raise InputError("no paths on stdin")
    else:
        root = Path(source)
        if not root.exists():
            raise InputError(f"{source}: no such file or folder")
        paths = _folder_images(root) if root.is_dir() else [root]
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for path in paths:
        try:
            batch = _read_one(path, shape)
        except InputError as error:
            if not skip_bad:
                raise
            if on_skip is not None:
                on_skip(str(path), str(error))
            continue
        names.extend(
            [str(path)] if path.suffix.lower() != ARRAY_SUFFIX else _indexed(path, len(batch))
        )
        arrays.append(batch)
        if len(names) > MAX_IMAGES:
            raise InputError(f"more than {MAX_IMAGES:,} images given")
    if not arrays:
        raise InputError(f"{source}: no readable images")
    return Images(tuple(names), torch.cat([normalise_images(a) for a in arrays]))


def _folder_images(root: Path) -> list[Path]:
    found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        hint = f" (it holds folders: give one, e.g. {root / folders[0]})" if folders else ""
        raise InputError(f"{root}: no PNG or JPEG files in the folder{hint}")
    return found


def _indexed(path: Path, count: int) -> Iterable[str]:
    return (f"{path}[{i}]" for i in range(count))


def _read_one(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One file -> uint8 (n, C, H, W), or float32 (n, C, H, W) in [0, 1]."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ARRAY_SUFFIX:
        return _read_array(path, shape)
    if suffix in IMAGE_SUFFIXES:
        return read_image(path, shape)[None]
    raise InputError(f"{path}: not a PNG, JPEG or .npy file")


def read_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Greyscale (one channel) or RGB (three), resized to H x W (bilinear), uint8 (C, H, W)."""
    from PIL import Image, UnidentifiedImageError

    bombs = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            # Past PIL's pixel limit an image is refused, not decoded with a warning on stderr.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                channels, height, width = shape
                converted = image.convert("L" if channels == 1 else "RGB")
                if converted.size != (width, height):
                    converted = converted.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.array(converted, dtype=np.uint8)  # a writable copy, (H, W[, 3])
                return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError, *bombs) as error:
        raise InputError(f"{path}: cannot read the image ({one_line(error)})") from error


def _read_array(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """(n, C, H, W) or (n, H, W, C), the layout told by where the channels are, never guessed
    from values; greyscale also (n, H, W), (n, H*W) or one (H, W) image. uint8 0..255, or float in
    [0, 1]; never unpickled."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(npy.MAGIC_PREFIX)) != npy.MAGIC_PREFIX:  # else numpy tries pickle
                raise InputError(f"{path}: not a .npy array file (no NumPy header)")
        # mmap first: a header that claims more data than the file holds is refused by the
        # mapping, before anything of its claimed size is allocated
        array = np.array(np.load(path, allow_pickle=False, mmap_mode="r"))
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: cannot read the array ({one_line(error)})") from error
    array = _as_nchw(array, shape, path)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind != "f":
        raise InputError(f"{path}: expected uint8 or float images, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
        raise InputError(f"{path}: float images must hold finite values in [0, 1]")
    return array.astype(np.float32)


def _as_nchw(array: np.ndarray, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """The array as (n, C, H, W), or an InputError that names the shapes this store takes."""
    channels, height, width = shape
    if channels == 1:  # greyscale: the channel axis may be left out
        if array.ndim == 2 and array.shape[1] == height * width:
            array = array.reshape(-1, height, width)
        elif array.shape == (height, width):  # np.save of a single image
            array = array[None]
        if array.ndim == 3 and array.shape[1:] == (height, width):
            array = array[:, None]
    if array.ndim == 4 and array.shape[0] > 0:
        if array.shape[1:] == shape:
            return array
        if array.shape[1:] == (height, width, channels):
            return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    side = f"{height}, {width}"
    takes = f"(n, {channels}, {side}) or (n, {side}, {channels})"
    if channels == 1:
        takes = f"(n, {side}), {takes}"
    raise InputError(f"{path}: expected an array of shape {takes}, got {array.shape}")
