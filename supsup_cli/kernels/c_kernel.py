"""The optional compiled kernel for packed-mask products (bitkernel.c), built with gcc at first use.

Why compiled: numpy must write every unpacked bit as a float before multiplying (about 17x the
bytes of the masks); the kernel turns each mask byte into a SIMD lane mask and adds the vector's
floats directly, one pass over the packed bytes. Built with -march=native into a cache folder keyed
by source, flags, compiler and CPU, loaded with ctypes. Without a compiler, or with
SUPSUP_KERNEL=0, callers fall back to numpy (same results up to float rounding).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np

from ..threads import cpu_threads

KERNEL_ENV: Final = "SUPSUP_KERNEL"  # "0" turns the kernel off
CACHE_ENV: Final = "SUPSUP_CACHE_DIR"
DEFAULT_FLAGS: Final = ("-O3", "-march=native")
COMPILE_TIMEOUT_SECONDS: Final = 120
MATMAT_COLUMNS: Final = 16  # bitkernel.c's columns per block: matmat pads to a multiple


def enabled() -> bool:
    return os.environ.get(KERNEL_ENV, "1") != "0"


def cache_dir() -> Path:
    """Where built kernels live: $SUPSUP_CACHE_DIR, else $XDG_CACHE_HOME/supsup, else ~/.cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "supsup"


def _cpu_signature() -> str:
    """CPU features the -march=native build depends on (a cache shared across machines is safe)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


@functools.cache
def build(flags: tuple[str, ...] = DEFAULT_FLAGS) -> ctypes.CDLL | None:
    """Compile (once per cache key) and load the kernel; None when that is not possible."""
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        return None
    source = resources.files("supsup_cli.kernels").joinpath("bitkernel.c").read_bytes()
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256(
        b"\0".join([source, " ".join(flags).encode(), version, _cpu_signature().encode()])
    ).hexdigest()[:24]
    target = cache_dir() / f"bitkernel-{key}.so"
    if not target.exists() and not _compile(compiler, source, flags, target):
        return None
    try:
        library = ctypes.CDLL(str(target))
    except OSError:
        return None
    for name in ("supsup_matvec", "supsup_rmatvec"):
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
    library.supsup_matmat.restype = ctypes.c_int
    library.supsup_matmat.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    return library


def _compile(compiler: str, source: bytes, flags: tuple[str, ...], target: Path) -> bool:
    """Build into a temporary file, then rename: concurrent first uses never see half a library."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            source_path = Path(work) / "bitkernel.c"
            source_path.write_bytes(source)
            built = Path(work) / target.name
            command = [compiler, *flags, "-shared", "-fPIC", "-pthread", str(source_path)]
            subprocess.run(
                [*command, "-o", str(built)],
                capture_output=True,
                timeout=COMPILE_TIMEOUT_SECONDS,
                check=True,
            )
            os.replace(built, target)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def kernel() -> ctypes.CDLL | None:
    """The default kernel, or None (disabled, or no compiler)."""
    return build() if enabled() else None


def _threads() -> int:
    return cpu_threads()


def _lane_order(vector: np.ndarray, nbytes: int) -> np.ndarray:
    """Pad to 8 * nbytes and reverse each group of 8 (bit b of a byte pairs with element b)."""
    padded = np.zeros(8 * nbytes, dtype=np.float32)
    padded[: vector.size] = vector
    return np.ascontiguousarray(padded.reshape(nbytes, 8)[:, ::-1])


def matvec(
    library: ctypes.CDLL, packed: np.ndarray, vector: np.ndarray, threads: int | None = None
) -> np.ndarray:
    """(k, B) packed masks x (D,) float32 -> (k,) float32, by the kernel."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    rows, nbytes = packed.shape
    lanes = _lane_order(vector, nbytes)
    out = np.empty(rows, dtype=np.float32)
    library.supsup_matvec(
        packed.ctypes.data, rows, nbytes, lanes.ctypes.data, out.ctypes.data, threads or _threads()
    )
    return out


def matmat(
    library: ctypes.CDLL, packed: np.ndarray, matrix: np.ndarray, threads: int | None = None
) -> np.ndarray:
    """(k, B) packed masks x (D, m) float32 -> (k, m) float32, by the kernel's tables: the masks
    are read once per block of up to 64 columns (many columns: per-image gradients)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    rows, nbytes = packed.shape
    mask_bits, columns = matrix.shape
    width = -(-columns // MATMAT_COLUMNS) * MATMAT_COLUMNS
    if (mask_bits, width) == (8 * nbytes, columns):  # used in place: no copy
        padded = np.ascontiguousarray(matrix, dtype=np.float32)
    else:
        padded = np.zeros((8 * nbytes, width), dtype=np.float32)
        padded[:mask_bits, :columns] = matrix
    out = np.zeros((rows, width), dtype=np.float32)
    status = library.supsup_matmat(
        packed.ctypes.data,
        rows,
        nbytes,
        padded.ctypes.data,
        width,
        out.ctypes.data,
        threads or _threads(),
    )
    if status != 0:
        raise RuntimeError(f"supsup_matmat refused {width} columns")
    return out[:, :columns]


def rmatvec(
    library: ctypes.CDLL,
    packed: np.ndarray,
    weights: np.ndarray,
    mask_bits: int,
    threads: int | None = None,
) -> np.ndarray:
    """Σ_i w_i M_i for (k, B) packed masks and (k,) weights -> (D,) float32, by the kernel."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    rows, nbytes = packed.shape
    lanes = np.zeros((nbytes, 8), dtype=np.float32)
    library.supsup_rmatvec(
        packed.ctypes.data,
        rows,
        nbytes,
        weights.ctypes.data,
        lanes.ctypes.data,
        threads or _threads(),
    )
    return np.ascontiguousarray(lanes[:, ::-1]).reshape(-1)[:mask_bits]
