"""Hostile stores: every command refuses a broken store cleanly or answers exactly as on the sound
store; nothing in a store is executed; no read allocates more than the format allows."""

from __future__ import annotations

import json
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hostile_stores import (
    BREAKAGES,
    CANARY,
    READERS,
    WRITERS,
    Breakage,
    make_hostile,
    stable,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from supsup_cli.cli import app
from supsup_cli.errors import StoreError
from supsup_cli.format.bits import unpack_mask
from supsup_cli.format.header import StoreHeader, TaskRecord
from supsup_cli.store import MaskStore, layout
from supsup_cli.store import location as storage
from supsup_cli.store.layout import ATTRIBUTE_KEY

runner = CliRunner()


def run(argv: list[str], store: Path) -> Any:
    return runner.invoke(app, [arg.replace("{store}", str(store)) for arg in argv])


def assert_clean_refusal(result: Any, what: str) -> None:
    """Exit 2, exactly one line on stderr naming the problem, nothing on stdout, no traceback."""
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), f"{what}: raised {result.exception!r}"
    assert result.exit_code == 2, f"{what}: exit {result.exit_code}, stderr {result.stderr!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: {result.stderr!r}"
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.fixture(scope="module")
def sound(permuted_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tasks of `permuted_store` in a version 4 store that holds every array (score
    sums kept, counts stored from the first task on), so that each can be damaged."""
    source = MaskStore.open(permuted_store)
    path = tmp_path_factory.mktemp("sound") / "s.zarr"
    bits = source.header.mask_bits
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layout, "STORED_COUNTS_TASKS", 1)
        store = MaskStore.create(
            path, source.net, source.header.mask_rule, source.header.density, keep_scores=True
        )
        for record, packed in zip(source.tasks(), source.read_packed(), strict=True):
            store.append_task(
                unpack_mask(packed, bits),
                np.random.default_rng(record.index).standard_normal(bits),
                data=record.data,
                classes=record.classes,
                accuracy=record.accuracy,
                train=record.train,
                created=record.created,
                seconds=record.seconds,
            )
    assert store.header.slot_arrays == ("mask_counts", "score_sum")
    return path


@pytest.fixture(scope="module")
def sound_answers(sound: Path) -> dict[str, Any]:
    answers = {}
    for name, argv in READERS.items():
        result = run(argv, sound)
        assert result.exit_code == 0, f"{name} on the sound store: {result.stderr}"
        answers[name] = stable(result.stdout, sound)
    return answers


@contextmanager
def address_space_headroom(gib: float = 2.0) -> Iterator[None]:
    """Cap this process's address space a little above its current size for the block: an
    allocation of gigabytes then fails loudly (MemoryError) instead of passing unnoticed."""
    status = Path("/proc/self/status").read_text().splitlines()
    size = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) << 10
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + int(gib * 2**30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.name for b in BREAKAGES])
def test_every_command_refuses_or_answers_exactly(
    breakage: Breakage, sound: Path, sound_answers: dict[str, Any], tmp_path: Path
) -> None:
    store = make_hostile(sound, tmp_path / "s.zarr", breakage)
    with address_space_headroom():  # the bombs would need 3 GB or more
        verify = run(["verify", "{store}", "--json"], store)
        answers = {name: run(argv, store) for name, argv in READERS.items()}
        writes = {name: run(argv, store) for name, argv in WRITERS.items()}
        verify_after = run(["verify", "{store}", "--json"], store)
    assert not (tmp_path / CANARY).exists(), "something in the store was executed"
    assert verify.exception is None or isinstance(verify.exception, SystemExit)
    if breakage.kind == "sound":
        assert verify.exit_code == 0, verify.stdout
        for name, result in {**answers, **writes}.items():
            assert result.exit_code == 0, f"{name}: {result.stderr}"
        assert verify_after.exit_code == 0, verify_after.stdout
        return
    assert verify.exit_code == 1, f"verify passed a broken store: {verify.stdout}"
    assert json.loads(verify.stdout)["problems"], verify.stdout
    for name, result in answers.items():
        if result.exit_code != 0:
            assert_clean_refusal(result, name)
        elif breakage.kind == "broken":  # it never read the damage: the sound store's answer
            assert stable(result.stdout, store) == sound_answers[name], f"{name}: wrong answer"
    for name, result in writes.items():
        if result.exit_code != 0:
            assert_clean_refusal(result, name)
    assert verify_after.exit_code == 1, "a writer repaired or hid damage it did not understand"


def test_the_generator_covers_what_the_issue_lists() -> None:
    names = " ".join(b.name for b in BREAKAGES)
    for kind in (
        "not-json",
        "dtype",
        "width-disagrees",
        "truncated",
        "missing",
        "count-beyond-arrays",
        "terabytes",
        "version-from-future",
        "checksum-mismatch",
        "codec-unknown",
        "pickle",
        "bomb",
    ):
        assert kind in names, kind


@pytest.mark.parametrize("where", ["s.zarr/.supsup.lock", ".s.zarr.supsup.lock"])
def test_a_symlinked_lock_file_is_never_followed(sound: Path, tmp_path: Path, where: str) -> None:
    """A lock file (an earlier release's in the store, or this one's beside it) that points at
    the user's file: writers must refuse and not touch it."""
    store = Path(shutil.copytree(sound, tmp_path / "s.zarr"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / where).unlink(missing_ok=True)
    (tmp_path / where).symlink_to(victim)
    result = run(WRITERS["train-task"], store)
    assert_clean_refusal(result, "train-task")
    assert victim.read_text() == "precious"
    assert MaskStore.open(store).task_count == 3


def test_reads_are_bounded_before_decoding(sound: Path, tmp_path: Path) -> None:
    """The limit applies to what is fetched: a 10 GB chunk costs at most its limit to refuse."""
    store = Path(shutil.copytree(sound, tmp_path / "s.zarr"))
    with (store / "masks" / "c" / "0" / "0").open("r+b") as handle:
        handle.truncate(10**10)
    with address_space_headroom(1.0), pytest.raises(StoreError, match="larger than"):
        MaskStore.open(store).read_packed([0])


def test_zstd_frames_are_summed_not_trusted() -> None:
    from numcodecs import Zstd

    one = Zstd(level=1).encode(b"a" * 5000)
    assert storage.zstd_decoded_size(one) == 5000
    assert storage.zstd_decoded_size(one + one) == 10_000
    with pytest.raises(StoreError, match="truncated"):
        storage.zstd_decoded_size(one[:-4])
    with pytest.raises(StoreError, match="not a zstd frame"):
        storage.zstd_decoded_size(b"\0" * 16)


# -- fuzzing the attributes and the records -----------------------------------------------------
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def header_paths(header: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in header.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths.extend(header_paths(value, (*prefix, key)))
    return paths


@pytest.fixture(scope="module")
def sound_header(sound: Path) -> dict[str, Any]:
    return json.loads((sound / "zarr.json").read_text())["attributes"][ATTRIBUTE_KEY]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_header_is_parsed_or_refused(
    sound_header: dict[str, Any], data: st.DataObject
) -> None:
    header = json.loads(json.dumps(sound_header))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(header_paths(header)))
        target = header
        for key in path[:-1]:
            target = target[key]
        if data.draw(st.booleans()):
            target[path[-1]] = data.draw(JSON)
        else:
            del target[path[-1]]
    try:
        parsed = StoreHeader.from_attrs(header)
    except StoreError:
        return
    # Accepted: then it describes a network the format allows, with consistent sizes.
    assert parsed.mask_bits == header["mask"]["bits"] and 0 <= parsed.task_count <= 1_000_000


@pytest.fixture(scope="module")
def fuzz_store(sound: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(sound, tmp_path_factory.mktemp("fuzz") / "s.zarr"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    attrs=st.dictionaries(st.sampled_from(["supsup", "other"]), JSON, max_size=2),
    info=st.booleans(),
)
def test_fuzzed_attributes_through_the_cli(
    fuzz_store: Path, attrs: dict[str, Any], info: bool
) -> None:
    meta = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    (fuzz_store / "zarr.json").write_text(json.dumps(meta))
    result = run(["info", "{store}", "--json"] if info else ["verify", "{store}"], fuzz_store)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == (2 if info else 1), result.stdout
    if info:
        assert_clean_refusal(result, "info")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    record=st.dictionaries(st.text(max_size=10), JSON, max_size=12) | JSON,
    raw=st.binary(max_size=64),
)
def test_fuzzed_records_are_parsed_or_refused(
    fuzz_store: Path, sound: Path, record: Any, raw: bytes
) -> None:
    header = MaskStore.open(sound).header
    for text in (json.dumps(record).encode(), raw):
        row = np.zeros(4096, dtype=np.uint8)
        row[: len(text)] = np.frombuffer(text[:4096], dtype=np.uint8)
        try:
            parsed = TaskRecord.decode(row, 0, header)
        except StoreError:
            continue
        assert parsed.index == 0 and parsed.data.isprintable()


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda r: {**r, "classes": [True]}, "classes"),  # JSON true is not an output
        (lambda r: {**r, "classes": []}, "classes"),
        (lambda r: {**r, "classes": [0, -1]}, "classes"),
        (lambda r: {**r, "classes": [0, 1.0]}, "classes"),
        (lambda r: json.dumps(r).encode() + b"\0{}", "not valid JSON"),  # text after the padding
        (lambda r: b"", "not valid JSON"),
    ],
)
def test_records_decoded_together_refuse_what_one_would(sound: Path, edit: Any, why: str) -> None:
    """The table is parsed for all rows at once: a bad row among good ones is still refused and
    named, and good rows parse exactly as they do one by one."""
    store = MaskStore.open(sound)
    rows = store.read_rows("records", store.rows())
    together = TaskRecord.decode_rows(rows, range(len(rows)), store.header)
    assert together == [TaskRecord.decode(row, i, store.header) for i, row in enumerate(rows)]
    bad = edit(json.loads(bytes(rows[1]).rstrip(b"\0")))
    text = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
    rows[1] = 0
    rows[1, : len(text)] = np.frombuffer(text, dtype=np.uint8)
    with pytest.raises(StoreError, match=f"task 1: .*{why}"):
        TaskRecord.decode_rows(rows, range(len(rows)), store.header)


def test_zarr_v2_stores_are_refused_before_reading(sound: Path, tmp_path: Path) -> None:
    store = make_hostile(
        sound, tmp_path / "s.zarr", {b.name: b for b in BREAKAGES}["zarr-v2-with-pickle"]
    )
    assert zarr.open_group(str(store), mode="r").attrs  # zarr itself would read it as v2
    with pytest.raises(StoreError, match="not a readable Zarr v3 group"):
        MaskStore.open(store)
    assert not (tmp_path / CANARY).exists()
