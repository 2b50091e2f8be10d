"""The JSON Schema of the header and the records: shipped with the package, equal to the one in
formats/, in step with the spec's field tables and limits and with the code's registries and
constants; the compiled record check agrees with `jsonschema`; messages name the field."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supsup_cli.errors import StoreError
from supsup_cli.format import architectures, codecs, generator, header, rules, schema
from supsup_cli.format.architectures import NetConfig
from supsup_cli.format.header import StoreHeader, TaskRecord
from supsup_cli.store import layout, location

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ROOT / "formats"
SPEC = (FORMATS / "supsup-store-v1.md").read_text()
SCHEMA = schema.schema()
RECORD = SCHEMA["$defs"]["task_record"]
NET = NetConfig("lenet-300-100", outputs=10, seed=3)


def sound_header() -> dict[str, Any]:
    return json.loads(json.dumps(StoreHeader(NET, "topk", 0.1, task_count=2).to_attrs()))


def sound_record(index: int = 0) -> dict[str, Any]:
    return TaskRecord(
        index, "permuted:1", (0, 1), "topk", 0.1, 0.9, "ab" * 32, {"lr": 0.1}, "2026", 1.0
    ).to_dict()


def test_the_shipped_schema_is_the_one_in_formats() -> None:
    shipped = ROOT / "supsup_cli" / "format" / schema.SCHEMA_FILE
    assert shipped.read_bytes() == (FORMATS / schema.SCHEMA_FILE).read_bytes()
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_sound_headers_need_neither_torch_nor_jsonschema() -> None:
    """`jsonschema` (40-80 ms to import) is only loaded to explain a refusal."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from supsup_cli.format.architectures import NetConfig\n"
        "from supsup_cli.format.header import StoreHeader\n"
        "header = StoreHeader(NetConfig('lenet-300-100'), 'topk', 0.1)\n"
        "assert StoreHeader.from_attrs(header.to_attrs()) == header\n"
        "assert 'jsonschema' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- the schema against the spec ------------------------------------------------------------
def spec_table_fields(kind: str) -> set[str]:
    """The backticked names in the first column of the spec's tables headed `| <kind> field |`."""
    names: set[str] = set()
    for table in re.findall(rf"^\| {kind} field \|.*?\n((?:\|.*\n)+)", SPEC, flags=re.M):
        for row in table.splitlines()[1:]:
            names.update(re.findall(r"`([a-z_.0-9]+)`", row.split("|")[1]))
    return names


def schema_fields(node: dict[str, Any], prefix: str = "") -> tuple[set[str], set[str]]:
    """All field paths of a schema object (dotted), and those that are not objects themselves."""
    every, leaves = set(), set()
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        every.add(path)
        if "properties" in sub:
            inner_every, inner_leaves = schema_fields(sub, f"{path}.")
            every |= inner_every
            leaves |= inner_leaves
        else:
            leaves.add(path)
    return every, leaves


@pytest.mark.parametrize(
    ("kind", "node"),
    [("header", SCHEMA), ("record", RECORD), ("log", SCHEMA["$defs"]["log_row"])],
)
def test_spec_tables_and_schema_name_the_same_fields(kind: str, node: dict[str, Any]) -> None:
    in_spec = spec_table_fields(kind)
    every, leaves = schema_fields(node)
    assert in_spec, f"no '{kind} field' table in the spec"
    assert leaves - in_spec == set(), f"in the schema, not in the spec's {kind} tables"
    assert in_spec - every == set(), f"in the spec's {kind} tables, not in the schema"


CONSTANTS = {
    name: getattr(module, name)
    for module in (header, architectures, generator, layout, location)
    for name in dir(module)
    if name.isupper()
}


def test_every_limit_has_one_value_in_code_schema_and_spec() -> None:
    limits = SCHEMA["x-limits"]
    spec_rows = dict(re.findall(r"^\| [^|]+ \| `([A-Z_]+)` \| ([\d,]+)(?: \w+)? \|$", SPEC, re.M))
    assert set(spec_rows) == set(limits), "the spec's limits table and x-limits differ"
    for name, value in limits.items():
        assert CONSTANTS[name] == value, name
        assert int(spec_rows[name].replace(",", "")) == value, name


def test_the_schema_applies_its_limits_and_the_code_registries() -> None:
    limits, props = SCHEMA["x-limits"], SCHEMA["properties"]
    assert props["version"]["maximum"] == header.FORMAT_VERSION == limits["FORMAT_VERSION"]
    assert props["task_count"]["maximum"] == limits["MAX_TASKS"]
    assert props["rows"]["maximum"] == props["packed"]["properties"]["rows"]["maximum"]
    assert props["rows"]["maximum"] == limits["MAX_TASKS"] + 1 == limits["MAX_ROWS"] - 1
    assert RECORD["properties"]["index"]["maximum"] == limits["MAX_TASKS"] - 1
    assert props["revision"]["maximum"] == limits["MAX_REVISION"]
    assert props["log_count"]["maximum"] == limits["MAX_LOG_ROWS"]
    assert props["row_chunk"]["maximum"] == limits["MAX_ROW_CHUNK"]
    assert props["network"]["properties"]["outputs"]["maximum"] == limits["MAX_OUTPUTS"]
    inputs = props["network"]["properties"]["inputs"]
    assert inputs["maximum"] == limits["MAX_INPUTS"] == 3 * limits["MAX_SIDE"] ** 2
    side = props["network"]["properties"]["input_shape"]["items"]
    assert side["maximum"] == limits["MAX_SIDE"]
    assert props["generator"]["properties"]["seed"]["maximum"] == limits["MAX_SEED"]
    assert props["generator"]["properties"]["name"]["const"] == generator.GENERATOR_NAME
    for key in ("data", "created"):
        assert RECORD["properties"][key]["maxLength"] == limits["MAX_RECORD_TEXT"]
    assert props["mask"]["properties"]["rule"]["enum"] == list(rules.MASK_RULES)
    assert RECORD["properties"]["rule"]["enum"] == list(rules.MASK_RULES)
    assert props["mask"]["properties"]["er_scale"]["maximum"] == rules.MAX_ER_SCALE
    assert props["packed"]["properties"]["codec"]["enum"] == list(codecs.CODECS)
    assert props["hopfield"]["properties"]["rule"]["const"] == header.HOPFIELD_RULE
    assert set(props["slots"]["properties"]) == set(header.SLOT_ARRAYS)


# -- the compiled record check against jsonschema -------------------------------------------
STRICT = schema._validator("$defs", schema.RECORD_DEF)
RECORDS = schema._compiled("$defs", schema.RECORD_DEF)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**21)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["topk", "sign", "ab" * 32, "x" * 1001, "permuted:1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(RECORD["properties"])), VALUES, max_size=3),
    dropped=st.sets(st.sampled_from(sorted(RECORD["properties"])), max_size=2),
)
def test_the_compiled_record_check_agrees_with_jsonschema(
    changes: dict[str, Any], dropped: set[str]
) -> None:
    record = {k: v for k, v in (sound_record() | changes).items() if k not in dropped}
    assert RECORDS(record) == STRICT.is_valid(record), record


HEADERS = schema._compiled()
STRICT_HEADER = schema._validator()
HEADER_PATHS = sorted(
    path for path in schema_fields(SCHEMA)[0] if not path.startswith(("hopfield", "packed"))
) + ["hopfield", "packed"]
SOUND_BLOCKS = {
    "hopfield": {"rule": "storkey-v1", "dtype": "float32", "generation": 1, "tasks": [0, 1]}
    | {"dropped": [1], "sha256": "ab" * 32},
    "packed": {"codec": "range-site", "rows": 2, "width": 40, "raw": "kept"},
}


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(HEADER_PATHS), VALUES | st.just([0, 0]), max_size=3),
    dropped=st.sets(st.sampled_from(HEADER_PATHS), max_size=2),
    blocks=st.sets(st.sampled_from(sorted(SOUND_BLOCKS))),
)
def test_the_compiled_header_check_agrees_with_jsonschema(
    changes: dict[str, Any], dropped: set[str], blocks: set[str]
) -> None:
    attrs = sound_header() | {name: json.loads(json.dumps(SOUND_BLOCKS[name])) for name in blocks}
    for path, value in [*changes.items(), *((p, "<drop>") for p in dropped)]:
        *parents, last = path.split(".")
        target = attrs
        for key in parents:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if value == "<drop>":
                target.pop(last, None)
            else:
                target[last] = value
    assert HEADERS(attrs) == STRICT_HEADER.is_valid(attrs), attrs


@pytest.mark.parametrize(
    "record",
    [
        {},
        [],
        "x",
        {**sound_record(), "index": 1.0},
        {**sound_record(), "density": float("nan")},
        {**sound_record(), "accuracy": float("inf")},
        {**sound_record(), "classes": [True]},
        {**sound_record(), "revision": False},
        {k: v for k, v in sound_record().items() if k != "sha256"},
    ],
)
def test_records_the_schema_refuses_are_refused_by_both(record: Any) -> None:
    assert not RECORDS(record) and not STRICT.is_valid(record)


def test_sound_records_never_reach_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-record cost stays the compiled check's: `jsonschema` only explains failures."""

    def refuse(*path: str) -> None:
        raise AssertionError(f"jsonschema validator asked for {path}")

    rows = np.stack([TaskRecord(**_fields(sound_record(i))).encode() for i in range(50)])
    header_ = StoreHeader(NET, "topk", 0.1, task_count=50)
    monkeypatch.setattr(schema, "_validator", refuse)
    assert StoreHeader.from_attrs(header_.to_attrs()).to_attrs() == header_.to_attrs()
    assert [r.index for r in TaskRecord.decode_rows(rows, range(50), header_)] == list(range(50))


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    return record | {"classes": tuple(record["classes"])}


# -- messages ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda h: h["generator"].update(seed=-1),
            "invalid 'generator' seed -1: must be an integer",
        ),
        (lambda h: h.update(version=True), "invalid format version True"),
        (lambda h: h.update(version=2), "missing revision with format version 2"),
        (lambda h: h["mask"].update(density=None), "'mask' density None with 'mask' rule 'topk'"),
        (lambda h: h["mask"].update(density=float("nan")), "invalid 'mask' density nan"),
        (lambda h: h.update(task_count="3"), "invalid task_count '3'"),
        (lambda h: h.update(slots=[]), "invalid 'slots' block: not an object"),
        (lambda h: h.update(hopfield={"rule": "x"}), "missing 'hopfield' dtype"),
        (lambda h: h.update(revision=1, rows=2, version=2), "invalid revision 1"),
        (lambda h: h["mask"].update(bits=5), "mask size 5 bits does not match"),
        (lambda h: h["network"].update(arch="resnet"), "unknown architecture 'resnet'"),
        (lambda h: h.update(row_chunk=2017), "invalid row_chunk 2017"),
        (lambda h: h.update(slots={"mask_counts": "ab" * 32}), "missing 'slots' score_sum"),
        (lambda h: h.update(version=4, revision=2, rows=2), "missing slots with format version 4"),
        (
            lambda h: (
                h.update(version=2, revision=2, rows=2, packed=SOUND_BLOCKS["packed"])
                or h["packed"].update(raw="dropped")
            ),
            "invalid 'packed' raw 'dropped' with format version 2: must be 'kept'",
        ),
    ],
)
def test_header_refusals_are_one_line_naming_the_field(change: Any, says: str) -> None:
    attrs = sound_header()
    change(attrs)
    with pytest.raises(StoreError) as caught:
        StoreHeader.from_attrs(attrs)
    message = str(caught.value)
    assert says in message and "\n" not in message, message


def test_version_4_names_the_per_weight_arrays_it_holds() -> None:
    """Version 4: `slots` is required and names only the arrays held (none, one or both);
    packed masks may be kept or dropped; versions 1-3 need both digests when `slots` exists."""
    v4 = sound_header() | {"version": 4, "revision": 2, "rows": 2}
    for held in ({}, {"score_sum": "ab" * 32}, {"mask_counts": "cd" * 32}):
        parsed = StoreHeader.from_attrs(v4 | {"slots": held})
        assert parsed.slot_arrays == tuple(held) and parsed.slot_digest("mask_counts") == (
            held.get("mask_counts")
        )
    packed = json.loads(json.dumps(SOUND_BLOCKS["packed"])) | {"raw": "dropped"}
    assert StoreHeader.from_attrs(v4 | {"slots": {}, "packed": packed}).packed.dropped
    both = {"mask_counts": "ab" * 32, "score_sum": "cd" * 32}
    assert StoreHeader.from_attrs(sound_header() | {"slots": both}).slot_arrays == tuple(both)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"classes": [0, 10]}, "'classes' must be outputs < 10"),
        ({"created": "\x1b[2J"}, "'created' is not printable text"),
        ({"index": 1}, "'index' 1 != row 0"),
        ({"accuracy": "99%"}, "invalid 'accuracy' '99%': must be a number or null in [0, 1]"),
        ({"data": "x" * 1001}, "of at most 1000 characters"),
    ],
)
def test_record_refusals_name_the_task_and_the_field(change: dict[str, Any], says: str) -> None:
    text = json.dumps(sound_record() | change).encode()[: header.RECORD_BYTES]
    row = np.zeros(header.RECORD_BYTES, dtype=np.uint8)
    row[: len(text)] = np.frombuffer(text, dtype=np.uint8)
    with pytest.raises(StoreError, match=f"^task 0: invalid record: .*{re.escape(says)}"):
        TaskRecord.decode(row, 0, StoreHeader(NET, "topk", 0.1, task_count=1))
