"""s3:// stores through fsspec, against a local S3 server (moto, 127.0.0.1 only): create, append,
infer, info, verify, and the conditional-write lock object that stands in for a file lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import fsspec
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import StoreError
from supsup_cli.format.architectures import NetConfig
from supsup_cli.store import MaskStore, layout
from supsup_cli.store import location as storage
from supsup_cli.store.faults import FAULT_ENV
from supsup_cli.store.layout import LOCK_NAME

# Without the optional s3 packages these tests are skipped, not broken (nothing above imports them).
s3fs = pytest.importorskip("s3fs")
ThreadedMotoServer = pytest.importorskip("moto.server").ThreadedMotoServer

BUCKET = "supsup-test"
NET = NetConfig("lenet-300-100", 10, 0)
FORK = multiprocessing.get_context("fork")
runner = CliRunner()


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) and a bucket; yields the bucket's URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,  # nothing from the user's AWS setup, no metadata service
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with mock.patch.dict(os.environ, env):
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()


def cli(*args: str) -> object:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def append_random_task(url: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    MaskStore.open(url, writable=True).append_task(
        rng.random(NET.mask_bits) < 0.5,
        torch.from_numpy(rng.standard_normal(NET.mask_bits, dtype=np.float32)),
        data=f"permuted:{seed}",
        classes=range(10),
        accuracy=0.5,
        train={},
        created="2026-01-01T00:00:00+00:00",
        seconds=1.0,
    )


def _append_with_fault(url: str, seed: int, step: str) -> None:
    os.environ[FAULT_ENV] = step
    append_random_task(url, seed)


def lock_object(url: str) -> str:
    return f"{url.removeprefix('s3://')}/{LOCK_NAME}"


def lock_content(url: str) -> dict:
    return json.loads(fsspec.filesystem("s3").cat_file(lock_object(url)))


def renewers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lease of")]


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll until `check()` holds. The deadline only stops a broken build from hanging: nothing
    asserted depends on how long the wait took."""
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_the_whole_cycle_on_s3(s3: str) -> None:
    url = f"{s3}/cycle.zarr"
    assert cli("init", url, "--json").exit_code == 0
    for spec in ("permuted:1", "permuted:2"):
        trained = cli("train-task", url, "--data", spec, "--batches", "60", "--quiet", "--json")
        assert trained.exit_code == 0, trained.stderr
    info = json.loads(cli("info", url, "--json").stdout)
    assert info["task_count"] == 2 and info["stored_bytes"] > 2 * 33_275
    assert [t["data"] for t in info["tasks"]] == ["permuted:1", "permuted:2"]
    assert cli("verify", url).exit_code == 0
    inferred = cli("infer", url, "--data", "permuted:2", "--trials", "2", "--batch", "64", "--json")
    assert inferred.exit_code == 0, inferred.stderr
    assert json.loads(inferred.stdout)["task_accuracy"] == 1.0
    fs = fsspec.filesystem("s3")
    assert not fs.exists(lock_object(url))  # released: the lock object is deleted


def test_s3_store_answers_like_the_same_local_store(s3: str, tmp_path: Path) -> None:
    url = f"{s3}/same.zarr"
    fs = fsspec.filesystem("s3")
    local = tmp_path / "same.zarr"
    MaskStore.create(local, NET, "topk", 0.5)
    append_random_task(str(local), 7)
    fs.put(str(local), url.removeprefix("s3://"), recursive=True)
    remote = MaskStore.open(url)
    assert remote.verify() == []
    assert np.array_equal(remote.read_packed(), MaskStore.open(local).read_packed())
    assert np.array_equal(remote.mask_counts(), MaskStore.open(local).mask_counts())


def test_concurrent_writers_on_s3_lose_nothing(s3: str) -> None:
    url = f"{s3}/concurrent.zarr"
    MaskStore.create(url, NET, "topk", 0.5)
    writers = [FORK.Process(target=append_random_task, args=(url, seed)) for seed in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    opened = MaskStore.open(url)
    assert opened.task_count == 4 and opened.verify() == []
    assert sorted(r.data for r in opened.tasks()) == [f"permuted:{i}" for i in range(4)]


def test_a_live_lock_makes_the_next_writer_wait_then_give_up(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3}/busy.zarr"
    MaskStore.create(url, NET, "topk", 0.5)
    monkeypatch.setattr(layout, "LOCK_TIMEOUT_SECONDS", 1.0)
    with storage.write_lock(url, LOCK_NAME, 1.0):
        holder = lock_content(url)["token"]
        with pytest.raises(StoreError, match="held the lock object"):
            append_random_task(url, 1)
        assert lock_content(url)["token"] == holder  # still the holder's
        assert MaskStore.open(url).task_count == 0
    append_random_task(url, 1)  # released: the next writer goes straight in
    assert MaskStore.open(url).task_count == 1


def test_a_killed_writers_lock_expires_after_the_lease(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3}/killed.zarr"
    MaskStore.create(url, NET, "topk", 0.5)
    append_random_task(url, 1)
    child = FORK.Process(target=_append_with_fault, args=(url, 2, "before-commit"))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert fs.exists(lock_object(url))  # the dead writer's lock object stays behind
    opened = MaskStore.open(url)
    assert opened.task_count == 1 and opened.verify() == []  # the old count, sound
    with monkeypatch.context() as patch:  # lease 60 s: not taken over within a 1 s wait
        patch.setattr(layout, "LOCK_TIMEOUT_SECONDS", 1.0)
        with pytest.raises(StoreError, match="held the lock object"):
            append_random_task(url, 3)
    monkeypatch.setattr(storage, "LOCK_LEASE_SECONDS", 1.0)
    append_random_task(url, 3)  # waits one unchanged lease, then takes the lock over
    opened = MaskStore.open(url)
    assert opened.task_count == 2 and opened.verify() == []


def test_a_live_writer_renews_its_lease(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer holding the lock past its lease renews it (a later expiry, a new ETag each
    third of a lease), so a waiter never sees it unchanged for a lease and cannot take it over."""
    url = f"{s3}/renewed.zarr"
    MaskStore.create(url, NET, "topk", 0.5)
    monkeypatch.setattr(storage, "LOCK_LEASE_SECONDS", 1.0)
    with storage.write_lock(url, LOCK_NAME, 5.0):
        first = lock_content(url)
        # Four thirds of a lease: the lease it was taken with has run out.
        wait_until(lambda: lock_content(url).get("renewals", 0) >= 4, "four renewals")
        renewed = lock_content(url)
        assert renewed["token"] == first["token"] and renewed["expires"] > first["expires"]
        with pytest.raises(StoreError, match="held the lock object"):
            with storage.write_lock(url, LOCK_NAME, 3.0):  # waits three leases, takes nothing
                pass
        assert lock_content(url)["token"] == first["token"]
        storage.confirm_lock(url)  # still ours: a commit would go ahead
    assert not fsspec.filesystem("s3").exists(lock_object(url))  # released with its last ETag
    assert renewers() == []  # renewing stopped with the release


def test_a_writer_overtaken_after_its_lease_commits_nothing(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3}/overtaken.zarr"
    MaskStore.create(url, NET, "topk", 0.5)
    fs = fsspec.filesystem("s3")
    monkeypatch.setattr(storage, "LOCK_LEASE_SECONDS", 1.0)
    with storage.write_lock(url, LOCK_NAME, 5.0):
        assert len(renewers()) == 1
        fs.pipe_file(lock_object(url), b'{"owner": "someone else"}')  # taken over meanwhile
        wait_until(lambda: renewers() == [], "the renewer finds out and stops")
        assert fs.cat_file(lock_object(url)) == b'{"owner": "someone else"}'  # not renewed over
        with pytest.raises(StoreError, match="lost the lock"):
            storage.confirm_lock(url)
    assert fs.cat_file(lock_object(url)) == b'{"owner": "someone else"}'  # not ours to delete


def test_oversized_remote_objects_are_refused(s3: str) -> None:
    url = f"{s3}/huge.zarr"
    fs = fsspec.filesystem("s3")
    fs.pipe_file(f"{url.removeprefix('s3://')}/zarr.json", b" " * (2 << 20) + b"{}")
    with pytest.raises(StoreError, match="larger than"):
        MaskStore.open(url)


def test_writing_without_a_lock_strategy_is_refused() -> None:
    result = cli("init", "memory://nowhere.zarr")
    assert result.exit_code == 2
    assert "writing needs a lock" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_local_store_is_copied_to_s3_and_back(s3: str, permuted_store: Path, tmp_path: Path):
    """`supsup copy` between a folder and an object store, both ways: same tasks and answers."""
    url = f"{s3}/copied.zarr"
    assert cli("copy", str(permuted_store), url, "--json").exit_code == 0
    back = tmp_path / "back.zarr"
    assert cli("copy", url, str(back)).exit_code == 0
    local, remote = MaskStore.open(permuted_store), MaskStore.open(url)
    assert remote.tasks() == local.tasks() == MaskStore.open(back).tasks()
    np.testing.assert_array_equal(remote.read_packed(), local.read_packed())
    answers = [
        json.loads(cli("infer", s, "--data", "permuted:1..3", "--trials", "2", "--json").stdout)
        for s in (str(permuted_store), url, str(back))
    ]
    assert answers[0]["specs"] == answers[1]["specs"] == answers[2]["specs"]


def test_a_bucket_this_account_may_only_read_is_copied(s3: str, permuted_store: Path, tmp_path):
    """Where the lock object cannot be written (S3 answers Access Denied, which s3fs raises as
    PermissionError), writers get one line and copies read the store without a lock."""
    url = f"{s3}/read-only.zarr"
    assert cli("copy", str(permuted_store), url).exit_code == 0
    real_sync, real_async = s3fs.S3FileSystem.call_s3, s3fs.S3FileSystem._call_s3

    def refuse(method: str, kwargs: dict) -> None:
        if method == "put_object" and kwargs.get("Key", "").startswith("read-only.zarr/"):
            raise PermissionError("Access Denied")

    def denied(self, method, *args, **kwargs):  # the lock object's calls
        refuse(method, kwargs)
        return real_sync(self, method, *args, **kwargs)

    async def denied_async(self, method, *args, **kwargs):  # zarr's writes
        refuse(method, kwargs)
        return await real_async(self, method, *args, **kwargs)

    with (
        mock.patch.object(s3fs.S3FileSystem, "call_s3", denied),
        mock.patch.object(s3fs.S3FileSystem, "_call_s3", denied_async),
    ):
        refused = cli("pack", url)
        assert refused.exit_code == 2 and len(refused.stderr.splitlines()) == 1
        assert "cannot write here (Access Denied)" in refused.stderr
        assert cli("copy", url, str(tmp_path / "c.zarr")).exit_code == 0
    copy = MaskStore.open(tmp_path / "c.zarr")
    assert copy.tasks() == MaskStore.open(permuted_store).tasks() and copy.verify() == []
