"""The JSON Schema of a store's header and task records (formats/supsup-store-v1.schema.json,
shipped in this package): the structural checks of reader rules R5 and R9, in one declaration.

Records come by the thousand and `jsonschema` takes about 0.2 ms each (and 40-80 ms to import),
so the schema is compiled here into plain predicates for the keywords it uses (a few
microseconds a record); `jsonschema` is imported only to explain a header or record that fails,
as one line naming the field. Both read integers and numbers strictly, as the spec says: JSON
`true` is not 1, `1.0` is not an integer, NaN and Infinity are not numbers.
"""

from __future__ import annotations

import functools
import json
import math
import re
import reprlib
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, Final

SCHEMA_FILE: Final = "supsup-store-v1.schema.json"
RECORD_DEF: Final = "task_record"
# Keywords that only describe; the record compiler knows every other keyword it meets.
ANNOTATIONS: Final = frozenset(
    {"title", "description", "$comment", "$schema", "$id", "$defs", "x-limits"}
)

Check = Callable[[Any], bool]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


TYPES: Final[dict[str, Check]] = {
    "integer": is_int,
    "number": is_number,
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


@functools.cache
def schema() -> dict[str, Any]:
    """The schema, read from the package (never from the repository's formats/ folder)."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text("utf-8"))


@functools.cache
def _validator_class() -> Any:
    import jsonschema  # imported on the first header check, not by `--help`

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine_many(
        {name: lambda _checker, value, check=check: check(value) for name, check in TYPES.items()}
    )
    return jsonschema.validators.extend(base, type_checker=strict)


@functools.cache
def _validator(*path: str) -> Any:
    """A `jsonschema` validator of the schema, or of the sub-schema at `path` (made once)."""
    target = schema()
    for key in path:
        target = target[key]
    return _validator_class()(target)


def header_problem(attrs: Any) -> str | None:
    """Why the header does not match the schema (the first failure, one line), or None."""
    return _problem(attrs, ())


def block_problem(name: str, block: Any) -> str | None:
    """Why one block of the header (`hopfield`, `packed`) does not match its schema, or None."""
    return _problem(block, ("properties", name))


def record_problem(record: Any) -> str | None:
    """Why a task record does not match the schema, or None."""
    return _problem(record, ("$defs", RECORD_DEF), quoted=True)


def _problem(instance: Any, path: tuple[str, ...], quoted: bool = False) -> str | None:
    if _compiled(*path)(instance):
        return None
    error = next(_validator(*path).iter_errors(instance), None)
    if error is None:  # the compiled check and jsonschema disagree: refuse all the same
        return "does not match the schema"
    prefix = path[1:] if path[:1] == ("properties",) else ()
    return describe(error, instance, prefix, quoted)


# -- the schema as predicates -----------------------------------------------------------------
@functools.cache
def _compiled(*path: str) -> Check:
    """The compiled check of the schema, or of the sub-schema at `path` (made once, reused)."""
    target = schema()
    for key in path:
        target = target[key]
    return compile_schema(target)


_PYTHON_TYPES: Final = {
    "integer": (int,),  # type(True) is bool: JSON true is no integer
    "number": (int, float),  # and finite, below
    "string": (str,),
    "array": (list,),
    "object": (dict,),
    "boolean": (bool,),
    "null": (type(None),),
}
_COMPILED: Final = frozenset(
    {"type", "const", "enum", "minimum", "maximum", "exclusiveMinimum", "maxLength", "pattern"}
    | {
        "minItems",
        "maxItems",
        "uniqueItems",
        "items",
        "required",
        "properties",
        "allOf",
        "if",
        "then",
    }
    | {"else"}
)


def compile_schema(node: dict[str, Any]) -> Check:
    """One predicate per sub-schema, equal to `jsonschema`'s verdict (with the strict types) on
    what `json.loads` returns, for the keywords the schema uses. Any other keyword is refused
    here, so the schema cannot outgrow the compiler unnoticed."""
    unknown = set(node) - _COMPILED - ANNOTATIONS
    if unknown:
        raise ValueError(f"the schema compiler does not know the keywords {sorted(unknown)}")
    kinds = node.get("type")
    names = [kinds] if isinstance(kinds, str) else kinds
    allowed = None if names is None else {t for n in names for t in _PYTHON_TYPES[n]}
    finite = names is not None and "number" in names
    options = [node["const"]] if "const" in node else node.get("enum")
    low, high = node.get("minimum"), node.get("maximum")
    above = node.get("exclusiveMinimum")
    longest, least, most = node.get("maxLength"), node.get("minItems"), node.get("maxItems")
    regex = re.compile(node["pattern"]) if "pattern" in node else None
    item = compile_schema(node["items"]) if "items" in node else None
    required = node.get("required", ())
    fields = [(name, compile_schema(sub)) for name, sub in node.get("properties", {}).items()]
    ranged = low is not None or high is not None or above is not None
    distinct = node.get("uniqueItems", False)
    every = [compile_schema(sub) for sub in node.get("allOf", ())]
    condition = compile_schema(node["if"]) if "if" in node else None
    then = compile_schema(node["then"]) if "then" in node else _anything
    otherwise = compile_schema(node["else"]) if "else" in node else _anything

    def check(v: Any) -> bool:
        kind = type(v)
        if allowed is not None and (
            kind not in allowed or (kind is float and finite and not math.isfinite(v))
        ):
            return False
        if options is not None and not any(_equal(v, o) for o in options):
            return False
        if ranged and is_number(v):
            if low is not None and not v >= low or high is not None and not v <= high:
                return False
            if above is not None and not v > above:
                return False
        if kind is str:
            if longest is not None and len(v) > longest:
                return False
            if regex is not None and regex.search(v) is None:
                return False
        elif kind is list:
            if least is not None and len(v) < least or most is not None and len(v) > most:
                return False
            if item is not None and not all(item(x) for x in v):
                return False
            if distinct and not _distinct(v):
                return False
        elif kind is dict:
            for name in required:
                if name not in v:
                    return False
            for name, one in fields:
                if name in v and not one(v[name]):
                    return False
        if every and not all(one(v) for one in every):
            return False
        return condition is None or (then if condition(v) else otherwise)(v)

    return check


def _anything(value: Any) -> bool:
    return True


def _distinct(items: list[Any]) -> bool:
    """No two items JSON-equal (true is not 1, 1 is 1.0); lists and objects among them are
    left to the `items` check, which refuses them wherever the schema asks for distinct items."""
    try:
        keys = {(isinstance(x, bool), x) for x in items}
    except TypeError:
        return True
    return len(keys) == len(items)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality of the scalars the schema names in `const` and `enum` (true is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return not isinstance(a, list | dict) and a == b


# -- one-line messages --------------------------------------------------------------------------
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlist = 40, 40, 40, 6
_SHORT.maxdict, _SHORT.maxlevel = 4, 2
LABELS: Final = {("version",): "format version"}  # what the old messages called these fields


def field_name(path: Sequence[Any], quoted: bool = False) -> str:
    """The field a message names: `('packed', 'width')` -> `'packed' width`, `('rows',)` ->
    `rows` (`'rows'` when `quoted`, as record messages name their keys)."""
    path = tuple(path)
    if path in LABELS:
        return LABELS[path]
    head, *rest = [str(p) for p in path] or ["the object"]
    if rest or quoted:
        head = repr(head)
    return " ".join([head, *(f"[{p}]" if p.isdigit() else p for p in rest)])


def describe(error: Any, instance: Any, prefix: tuple[str, ...] = (), quoted: bool = False) -> str:
    """A `jsonschema` error as one line naming the field: `invalid 'packed' width 2: must be
    an integer >= 4`, or `missing 'rows' with format version 2`."""
    path = (*prefix, *error.absolute_path)
    context = "".join(
        f" with {field_name((*prefix, *where), quoted)} {_SHORT.repr(value)}"
        for where, value in _conditions(error, instance)
    )
    if error.validator == "required":
        missing = next(n for n in error.validator_value if n not in error.instance)
        return f"missing {field_name((*path, missing), quoted)}{context}"
    if error.validator == "type" and error.validator_value == "object":
        return f"invalid {field_name(path, quoted=True)} block: not an object{context}"
    shown = _SHORT.repr(error.instance)
    name = field_name(path, quoted)
    return f"invalid {name} {shown}{context}: must be {expectation(error.schema)}"


def _conditions(error: Any, instance: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """The fields an `if` tested when the error comes from its `then` or `else` branch."""
    trail = list(error.absolute_schema_path)
    if len(trail) < 3 or trail[0] != "allOf" or trail[2] not in ("then", "else"):
        return
    condition = schema()["allOf"][trail[1]]["if"]  # only the header's root has conditions
    for where in _leaves(condition):
        value = instance
        for key in where:
            value = value.get(key) if isinstance(value, dict) else None
        yield where, value


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, sub in node.get("properties", {}).items():
        if "properties" in sub:
            yield from _leaves(sub, (*path, name))
        else:
            yield (*path, name)


def expectation(node: dict[str, Any]) -> str:
    """What a sub-schema asks for, in words."""
    if "const" in node:
        return repr(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(repr(o) for o in node["enum"])
    kinds = node.get("type", [])
    words = " or ".join(_ARTICLES[k] for k in ([kinds] if isinstance(kinds, str) else kinds))
    low, high = node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum")
    opening = "(" if "exclusiveMinimum" in node else "["
    if low is not None and high is not None:
        words += f" in {opening}{low}, {high}]"
    elif low is not None:
        words += f" {'>' if opening == '(' else '>='} {low}"
    elif high is not None:
        words += f" <= {high}"
    if "maxLength" in node:
        words += f" of at most {node['maxLength']} characters"
    if "pattern" in node:
        words += f" matching {node['pattern']}"
    if "items" in node:
        distinct = "distinct " if node.get("uniqueItems") else ""
        least = f"at least {node['minItems']} " if node.get("minItems") else ""
        words += f" of {least}{distinct}items, each {expectation(node['items'])}"
    return words or "as the schema says"


_ARTICLES: Final = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "a list",
    "object": "an object",
    "boolean": "true or false",
    "null": "null",
}
