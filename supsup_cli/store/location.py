"""Where a store's bytes live: a local folder or an fsspec URL (s3://...), read within limits.

The reader and writer decide what the bytes mean; this module fetches them. Every read goes through
`GuardedStore`, which refuses any value larger than the format allows (a huge file, a device
such as /dev/zero, a zstd frame that would decompress to gigabytes) before it is decoded, so
a hostile store cannot make a reader allocate more than an honest store of its size would.
Writers hold a lock: a kernel file lock for folders, a conditional-write lock object for s3://
(formats/SECURITY.md, "Writers and locks").
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import json
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import fsspec
from zarr.abc.store import ByteRequest, RangeByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from ..errors import StoreError

METADATA_LIMIT: Final = 1 << 20  # bytes of one zarr.json; the store's are under 4 KiB
PARTIAL_SUFFIX: Final = ".partial"  # zarr's LocalStore writes aside under this suffix, then renames
WRITING_MARKER: Final = (
    ".supsup.writing"  # there while a writer holds the lock; a killed one's stays
)
LOCK_LEASE_SECONDS: Final = float(os.environ.get("SUPSUP_LOCK_LEASE", "60"))
LOCKING_PROTOCOLS: Final = ("s3",)  # object stores whose conditional writes the lock relies on
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_URL: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_POLL_FIRST, _POLL_MAX = 0.05, 1.0  # seconds between lock attempts: first, and at most


def normalise(location: str | os.PathLike[str]) -> str:
    """A location as a string: URLs kept as typed (Path folds 's3://'), file:// dropped."""
    text = os.fspath(location)
    return text[len("file://") :] if text.startswith("file://") else text


def is_url(location: str) -> bool:
    return bool(_URL.match(location))


def _filesystem(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, root = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as error:  # unknown protocol, or its package not installed
        raise StoreError(f"{location}: cannot open this URL ({_one_line(error)})") from error
    fs.invalidate_cache()  # other processes write the store: listings must be fresh
    return fs, root


def exists(location: str) -> bool:
    """Whether anything is at the location (a folder, a file, or objects under a URL prefix)."""
    if not is_url(location):
        return os.path.lexists(location)
    fs, root = _filesystem(location)
    return bool(fs.exists(root))


def is_file(location: str) -> bool:
    """Whether the location is a single file/object (where no store can be made)."""
    if not is_url(location):
        return os.path.lexists(location) and not os.path.isdir(location)
    fs, root = _filesystem(location)
    return bool(fs.isfile(root))


def entries(location: str, ignore: str) -> list[str]:
    """Names directly under the location, except `ignore` (the lock), the writing marker and
    zarr's partial files."""
    if is_url(location):
        fs, root = _filesystem(location)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    else:
        names = [p.name for p in Path(location).iterdir()]
    skip = (ignore, WRITING_MARKER)
    return [n for n in names if n not in skip and not n.endswith(PARTIAL_SUFFIX)]


def remove(location: str, name: str) -> None:
    """Delete one entry (file or tree) directly under the location."""
    if is_url(location):
        fs, root = _filesystem(location)
        fs.rm(f"{root.rstrip('/')}/{name}", recursive=True)
        return
    target = Path(location) / name
    shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()


def remove_partial_files(location: str) -> None:
    """Delete files a killed writer left half-written; only call while holding the writer lock.

    zarr writes each local file aside (`*.partial`) and renames it into place; a writer killed in
    between leaves the aside file. Only lock holders write, so any such file is a dead writer's.
    Object stores need nothing: a PUT is atomic. This walks the whole store: `write_lock` calls
    it only when the writing marker says the last writer died.
    """
    if is_url(location) or not os.path.isdir(location):
        return
    for leftover in Path(location).rglob(f"*{PARTIAL_SUFFIX}"):
        if leftover.is_file() or leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def stored_bytes(location: str) -> int:
    """Bytes of all files of the store."""
    if is_url(location):
        fs, root = _filesystem(location)
        return int(fs.du(root))
    return sum(p.lstat().st_size for p in Path(location).rglob("*") if p.is_file())


# -- reading within limits -----------------------------------------------------------------------
@dataclass
class ReadLimits:
    """The most bytes one read may return: metadata until the header is known, then chunks.

    `zstd_arrays` names the arrays whose chunks are zstd frames: their declared decoded size
    is checked against `chunk_bytes` before the codec sees them.
    """

    chunk_bytes: int = METADATA_LIMIT
    zstd_arrays: set[str] = field(default_factory=set)

    def of(self, key: str) -> int:
        return METADATA_LIMIT if key.rsplit("/", 1)[-1] == "zarr.json" else self.chunk_bytes


class GuardedStore(WrapperStore[Any]):
    """A zarr store whose reads are bounded by `limits` and refuse non-regular local files."""

    def __init__(self, store: Any, location: str, limits: ReadLimits | None = None) -> None:
        super().__init__(store)
        self.location = location
        self.limits = limits or ReadLimits()

    def _with_store(self, store: Any) -> GuardedStore:
        return type(self)(store, self.location, self.limits)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        limit = self.limits.of(key)
        if isinstance(self._store, LocalStore) and byte_range is None:
            # In a thread, as LocalStore reads (a stat may wait on the disk), all in one go.
            raw = await asyncio.to_thread(self._read_local, key, limit)
            value = None if raw is None else prototype.buffer.from_bytes(raw)
        else:
            # One byte more than allowed tells "too big" apart from "exactly at the limit".
            request = RangeByteRequest(0, limit + 1) if byte_range is None else byte_range
            value = await self._store.get(key, prototype, request)
        if value is None:
            return None
        if len(value) > limit:
            raise StoreError(
                f"{self.location}: '{key}' is larger than the {limit:,} bytes the format allows"
            )
        if key.rsplit("/", 1)[-1] != "zarr.json" and any(
            key.startswith(f"{array}/") for array in self.limits.zstd_arrays
        ):
            decoded = zstd_decoded_size(
                value.as_numpy_array().tobytes(), f"{self.location}: '{key}'"
            )
            if decoded > limit:
                raise StoreError(
                    f"{self.location}: '{key}' would decompress to {decoded:,} bytes; "
                    f"the format allows {limit:,}"
                )
        return value

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    def _read_local(self, key: str, limit: int) -> bytes | None:
        """At most `limit` + 1 bytes of a local file; None if absent. Plain files only: a FIFO
        would block the reader forever (opened non-blocking here, then refused), a device
        never ends."""
        try:
            fd = os.open(Path(self._store.root) / key, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with open(fd, "rb", closefd=True) as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"{self.location}: '{key}' is not a regular file")
            return handle.read(limit + 1)


def zstd_decoded_size(data: bytes, name: str = "a chunk") -> int:
    """Total decoded size the zstd frames in `data` declare (RFC 8878), walking block headers.

    numcodecs decodes every frame of a chunk and trusts none of their sizes, so a few KiB of
    frames could allocate gigabytes; each frame must declare its size, and they are summed.
    """
    position, total = 0, 0
    while position < len(data):
        magic = data[position : position + 4]
        if len(magic) == 4 and magic[0] & 0xF0 == 0x50 and magic[1:] == b"\x2a\x4d\x18":
            skip = int.from_bytes(data[position + 4 : position + 8], "little")  # skippable frame
            position += 8 + skip
            if position > len(data):
                raise StoreError(f"{name}: a zstd frame is truncated")
            continue
        if magic != ZSTD_MAGIC or position + 5 > len(data):
            raise StoreError(f"{name} is not a zstd frame")
        descriptor = data[position + 4]
        size_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
        has_checksum, dictionary_flag = (descriptor >> 2) & 1, descriptor & 3
        position += 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dictionary_flag]
        width = (1 if single_segment else 0, 2, 4, 8)[size_flag]
        if width == 0:
            raise StoreError(f"{name}: a zstd frame does not declare its size")
        declared = int.from_bytes(data[position : position + width], "little")
        total += declared + (256 if width == 2 else 0)
        position += width
        last = False
        while not last:  # blocks: 3-byte header (last flag, type, size); RLE blocks hold 1 byte
            if position + 3 > len(data):
                raise StoreError(f"{name}: a zstd frame is truncated")
            header = int.from_bytes(data[position : position + 3], "little")
            last, kind, size = bool(header & 1), (header >> 1) & 3, header >> 3
            if kind == 3:
                raise StoreError(f"{name}: a zstd frame has a reserved block type")
            position += 3 + (1 if kind == 1 else size)
        position += 4 * has_checksum
        if position > len(data):
            raise StoreError(f"{name}: a zstd frame is truncated")
    return total


def zarr_store(location: str, writable: bool, limits: ReadLimits | None = None) -> GuardedStore:
    """The zarr store of a location (LocalStore or FsspecStore), reads bounded by `limits`."""
    if not is_url(location):
        return GuardedStore(LocalStore(location, read_only=not writable), location, limits)
    try:
        inner = FsspecStore.from_url(location, read_only=not writable)
    except (ImportError, ValueError) as error:
        raise StoreError(f"{location}: cannot open this URL ({_one_line(error)})") from error
    return GuardedStore(inner, location, limits)


# -- writers and locks ---------------------------------------------------------------------------
class ReadOnlyLocation(StoreError):
    """No writer lock can be taken here: a read-only folder or bucket, or a URL scheme without
    conditional writes. Readers need no lock; a copy reads such a store without one."""


_READ_ONLY_ERRNOS: Final = (errno.EROFS, errno.EACCES, errno.EPERM)


def lock_file(location: str, name: str) -> str:
    """The lock file of a folder store: beside the folder (`.<folder><name>`), not in it, so
    that zarr, listing the group, finds nothing it does not know. Symlinks are resolved: every
    path to one store takes the same lock."""
    real = os.path.realpath(location)
    return os.path.join(os.path.dirname(real), f".{os.path.basename(real)}{name}")


@contextmanager
def write_lock(location: str, name: str, timeout: float) -> Iterator[None]:
    """Hold the store's one writer lock for the block: the file `lock_file()` for a folder (and
    `<store>/<name>` too where an earlier release left it, so that its writers are excluded),
    the object `<store>/<name>` for s3://."""
    if is_url(location):
        with _object_lock(location, name, timeout):
            yield
        return
    from filelock import FileLock, Timeout  # here: readers (info, verify) never take the lock

    marker = Path(location) / WRITING_MARKER
    legacy = os.path.join(location, name)  # where releases before this one kept the lock
    with ExitStack() as held:
        try:
            Path(location).mkdir(parents=True, exist_ok=True)
            held.enter_context(FileLock(lock_file(location, name), timeout=timeout))
            if os.path.lexists(legacy):  # flock: the kernel releases it if the holder dies
                held.enter_context(FileLock(legacy, timeout=timeout))
            if marker.exists():  # the last holder was killed: clear its half-written files
                remove_partial_files(location)
            marker.touch()
        except Timeout as error:
            raise StoreError(
                f"{location}: another writer has held the lock for {timeout:.0f} s "
                "(set SUPSUP_LOCK_TIMEOUT to wait longer)"
            ) from error
        except OSError as error:
            if error.errno in _READ_ONLY_ERRNOS:
                raise ReadOnlyLocation(
                    f"{location}: cannot write here ({error.strerror})"
                ) from error
            raise
        try:
            yield
        finally:  # not reached by a killed writer: its marker stays for the next one
            marker.unlink(missing_ok=True)


@dataclass
class _HeldLock:
    """A lock object this process holds: its ETag changes with every renewal, under `guard` so
    that `confirm_lock` never compares against an ETag the renewer is replacing."""

    fs: Any
    bucket: str
    key: str
    etag: str
    body: dict[str, Any]
    guard: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)


_held: dict[str, _HeldLock] = {}


def confirm_lock(location: str) -> None:
    """Before a commit: check that this process still holds the store's lock object.

    A holder whose renewals stalled for a lease (a suspended process, a lost network) may have
    been overtaken; it must then commit nothing (its rows past the count are ignored by readers
    and overwritten by the next writer).
    """
    held = _held.get(location)
    if held is None:
        return
    with held.guard:
        etag = _head_etag(held)
    if etag != held.etag:
        raise StoreError(
            f"{location}: this writer lost the lock (not renewed within the "
            f"{LOCK_LEASE_SECONDS:.0f} s lease, set SUPSUP_LOCK_LEASE); nothing was committed"
        )


@contextmanager
def _object_lock(location: str, name: str, timeout: float) -> Iterator[None]:
    """Lock object `<store>/<name>` created with If-None-Match: * (one creator wins).

    A waiter that sees the same lock object (same ETag) for a whole lease takes it over with
    If-Match on that ETag (one taker wins), so a writer killed while holding it delays the next
    one by at most the lease. A live holder renews it (`_renew`), however long it writes.
    Release deletes the object if it is still ours.
    """
    fs, root = _filesystem(location)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & set(LOCKING_PROTOCOLS):
        raise ReadOnlyLocation(
            f"{location}: writing needs a lock; supported for local folders and "
            f"{', '.join(p + '://' for p in LOCKING_PROTOCOLS)} (reading works for any URL)"
        )
    bucket, key, _ = fs.split_path(f"{root.rstrip('/')}/{name}")
    now = datetime.now(UTC)
    content = {
        "owner": f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}",
        "token": uuid.uuid4().hex,
        "acquired": now.isoformat(timespec="seconds"),
        "lease_seconds": LOCK_LEASE_SECONDS,
        "renewals": 0,
        "expires": (now + timedelta(seconds=LOCK_LEASE_SECONDS)).isoformat(),
    }
    held = _HeldLock(fs, bucket, key, "", content)
    body = json.dumps(content).encode()
    started, pause, seen = time.monotonic(), _POLL_FIRST, None  # seen: (etag, since)
    while True:
        try:
            held.etag = fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*"
            )["ETag"]
            break
        except FileExistsError:
            pass
        except PermissionError as error:  # a bucket this account may read but not write
            raise ReadOnlyLocation(f"{location}: cannot write here ({_one_line(error)})") from error
        etag = _head_etag(held)
        if etag is not None:
            if seen is None or seen[0] != etag:
                seen = (etag, time.monotonic())
            elif time.monotonic() - seen[1] >= LOCK_LEASE_SECONDS:
                try:  # the holder neither finished nor renewed within a lease: it is gone
                    held.etag = fs.call_s3(
                        "put_object", Bucket=bucket, Key=key, Body=body, IfMatch=etag
                    )["ETag"]
                    break
                except OSError:
                    seen = None  # another waiter took it first
        if time.monotonic() - started > timeout:
            raise StoreError(
                f"{location}: another writer has held the lock object for {timeout:.0f} s "
                "(set SUPSUP_LOCK_TIMEOUT to wait longer)"
            )
        time.sleep(pause)
        pause = min(pause * 1.5, _POLL_MAX)
    _held[location] = held
    renewer = threading.Thread(target=_renew, args=(held,), name=f"lease of {key}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        held.released.set()
        renewer.join()  # no renewal in flight: the ETag below is the object's last one
        del _held[location]
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=held.etag)
        except OSError:
            pass  # overtaken after a lease: the lock is no longer ours to delete


def _renew(held: _HeldLock) -> None:
    """Every third of a lease until released, rewrite the lock object with a later expiry, If-Match
    its ETag. Each rewrite changes the ETag, so waiters never see the same one for a whole lease.
    A rewrite refused because the ETag changed means another writer took the lock over: renewing
    stops, and `confirm_lock` stops this writer before its commit."""
    while not held.released.wait(LOCK_LEASE_SECONDS / 3):
        with held.guard:
            held.body["renewals"] += 1
            expires = datetime.now(UTC) + timedelta(seconds=LOCK_LEASE_SECONDS)
            held.body["expires"] = expires.isoformat()
            try:
                held.etag = held.fs.call_s3(
                    "put_object",
                    Bucket=held.bucket,
                    Key=held.key,
                    Body=json.dumps(held.body).encode(),
                    IfMatch=held.etag,
                )["ETag"]
                continue
            except OSError:
                pass
            try:
                if _head_etag(held) != held.etag:
                    return  # overtaken (or deleted): the lock is no longer ours to renew
            except OSError:
                pass  # the store did not answer: try again at the next third of the lease


def _head_etag(held: _HeldLock) -> str | None:
    try:
        return held.fs.call_s3("head_object", Bucket=held.bucket, Key=held.key)["ETag"]
    except FileNotFoundError:
        return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
