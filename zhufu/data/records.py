"""The record format of raw shards and merged.json (schemas/record.schema.yaml), and reading data files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from zhufu.config import SCHEMAS
from zhufu.errors import DataError
from zhufu.io import read_json, read_text


@cache
def record_schema() -> dict:
    return yaml.safe_load(SCHEMAS.joinpath("record.schema.yaml").read_text(encoding="utf-8"))


@cache
def record_validator():
    return jsonschema.Draft202012Validator(record_schema())


_TYPES = {
    "object": "{v}.__class__ is dict",
    "array": "{v}.__class__ is list",
    "string": "{v}.__class__ is str",
    "integer": "{v}.__class__ is int",  # jsonschema also takes 1.0: that is left to it
    "number": "{v}.__class__ is int or {v}.__class__ is float",
    "boolean": "{v}.__class__ is bool",
    "null": "{v} is None",
}
# keywords compile_check turns into code; any other keyword that asserts something leaves it to jsonschema,
# and what jsonschema ignores (descriptions, unknown keys) is ignored here too
_COMPILED = {
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "minLength",
    "minimum",
}


def _emit(schema: Any, v: str, pad: str, lines: list[str], names: list[int]) -> bool:
    """Append the lines that `return False` when the value in variable `v` breaks `schema`; False when the
    schema asserts something this does not compile."""
    if not isinstance(schema, dict):
        return False
    if not set(schema) & set(jsonschema.Draft202012Validator.VALIDATORS) <= _COMPILED:
        return False
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not all(t in _TYPES for t in types):
            return False
        lines.append(f"{pad}if not ({' or '.join(_TYPES[t].format(v=v) for t in types)}): return False")
    if "minLength" in schema:
        lines.append(f"{pad}if {v}.__class__ is str and len({v}) < {int(schema['minLength'])}: return False")
    if "minimum" in schema:
        low = schema["minimum"]
        lines.append(
            f"{pad}if ({v}.__class__ is int or {v}.__class__ is float) and not {v} >= {low!r}: return False"
        )
    if "minItems" in schema:
        lines.append(f"{pad}if {v}.__class__ is list and len({v}) < {int(schema['minItems'])}: return False")
    if "items" in schema:
        names.append(len(names))
        item = f"v{len(names)}"
        lines.append(f"{pad}if {v}.__class__ is list:")
        lines.append(f"{pad}    for {item} in {v}:")
        if not _emit(schema["items"], item, pad + "        ", lines, names):
            return False
    if {"required", "properties", "additionalProperties"} & set(schema):
        lines.append(f"{pad}if {v}.__class__ is dict:")
        for key in schema.get("required", []):
            lines.append(f"{pad}    if {key!r} not in {v}: return False")
        if "additionalProperties" in schema:
            if schema["additionalProperties"] is not False or "patternProperties" in schema:
                return False
            names.append(len(names))
            allowed = f"allowed{len(names)}"
            lines.insert(0, f"{allowed} = frozenset({sorted(schema.get('properties', {}))!r})")
            lines.append(f"{pad}    if not {allowed}.issuperset({v}): return False")
        for key, sub in schema.get("properties", {}).items():
            names.append(len(names))
            value = f"v{len(names)}"
            lines.append(f"{pad}    if {key!r} in {v}:")
            lines.append(f"{pad}        {value} = {v}[{key!r}]")
            if not _emit(sub, value, pad + "        ", lines, names):
                return False
    lines.append(f"{pad}pass")
    return True


def compile_check(schema: dict) -> Callable[[Any], bool] | None:
    """A Python predicate, compiled once from the schema, that is True only for instances the JSON schema
    accepts: the keywords the record schema uses (type, required, properties, additionalProperties: false,
    items, minItems, minLength, minimum) become plain `if` lines; None when the schema asserts anything else.
    False means "ask jsonschema": it decides and words the error, so the fast path changes no verdict and
    no message."""
    lines: list[str] = []
    if not _emit(schema, "v0", "    ", lines, []):
        return None
    constants = [line for line in lines if not line.startswith(" ")]
    body = [line for line in lines if line.startswith(" ")]
    source = "\n".join(constants) + "\ndef check(v0):\n" + "\n".join(body) + "\n    return True\n"
    scope: dict = {}
    exec(compile(source, "<record schema check>", "exec"), scope)  # noqa: S102 (our own generated code)
    return scope["check"]


@cache
def record_check() -> Callable[[Any], bool]:
    """The fast path of validate_records: compile_check of the record schema (or, for a schema it cannot
    compile, nothing passes it and jsonschema checks every record)."""
    return compile_check(record_schema()) or (lambda x: False)


def _where(error) -> str:
    path = "/".join(str(p) for p in error.absolute_path)
    return f" (at {path})" if path else ""


def validate_records(records: Any, source: str | Path) -> list[dict]:
    """Check a shard's records against the record schema; DataError names the file and record index."""
    if not isinstance(records, list):
        raise DataError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    fast = record_check()
    for i, record in enumerate(records):
        if fast(record):
            continue
        error = next(
            iter(
                sorted(record_validator().iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
            ),
            None,
        )
        if error is not None:
            raise DataError(f"{source}: record {i}: {error.message}{_where(error)}")
    return records


_UNSHARED = frozenset({"id", "output"})  # values unique to each record: not worth a memo entry
_SPACE = re.compile(r"[ \t\n\r]*")


def _shared(value: Any, memo: dict, key: str | None = None) -> Any:
    """`value` with its dict keys and strings replaced by equal ones seen before (JSON decoding makes a new
    string for each: a million records held a million copies of each key, prompt and system prompt)."""
    cls = value.__class__
    if cls is dict:
        return {memo.setdefault(k, k): _shared(v, memo, k) for k, v in value.items()}
    if cls is list:
        return [_shared(v, memo, key) for v in value]
    if cls is str and key not in _UNSHARED:
        return memo.setdefault(value, value)
    return value


def read_records(path: str | Path, chunk_chars: int = 1 << 22) -> list:
    """A JSON file of records (validated: validate_records), read one element at a time with equal strings
    shared between records, so that peak memory is the records', not the file's text and the records'.
    Anything but a well-formed JSON list is read again whole (read_json), for its usual one-line error."""
    p = Path(path)
    decode = json.JSONDecoder().raw_decode
    memo: dict[str, str] = {}
    records: list = []
    try:
        with open(p, encoding="utf-8") as fh:
            buf, pos, eof = "", 0, False

            def more() -> None:
                nonlocal buf, pos, eof
                chunk = fh.read(chunk_chars)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0

            more()
            pos = _SPACE.match(buf, pos).end()
            if buf[pos : pos + 1] != "[":
                return validate_records(read_json(p), p)
            pos = _SPACE.match(buf, pos + 1).end()
            while pos == len(buf) and not eof:
                more()
                pos = _SPACE.match(buf, pos).end()
            if buf[pos : pos + 1] == "]":
                pos += 1
            else:
                while True:
                    try:
                        value, end = decode(buf, pos)
                    except json.JSONDecodeError:
                        if eof:
                            return validate_records(read_json(p), p)
                        more()
                        pos = _SPACE.match(buf, pos).end()
                        continue
                    if end == len(buf) and not eof:  # a number or literal may go on in the next chunk
                        more()
                        continue
                    records.append(_shared(value, memo))
                    pos = _SPACE.match(buf, end).end()
                    while pos == len(buf) and not eof:
                        more()
                        pos = _SPACE.match(buf, pos).end()
                    sep = buf[pos : pos + 1]
                    if sep == "]":
                        pos += 1
                        break
                    if sep != ",":
                        return validate_records(read_json(p), p)
                    pos = _SPACE.match(buf, pos + 1).end()
            while not eof:
                more()
            if _SPACE.match(buf, pos).end() != len(buf):  # extra data after the list
                return validate_records(read_json(p), p)
    except (OSError, UnicodeDecodeError, RecursionError):  # read_json words each of these in one line
        return validate_records(read_json(p), p)
    return validate_records(records, p)


def read_rows(path: str | Path) -> Any:
    """A JSON list, or JSON Lines (one object per line)."""
    p = Path(path)
    if p.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(read_text(p).splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}, line {lineno}: not valid JSON ({e.msg})") from None
                except RecursionError:
                    raise DataError(f"{p}, line {lineno}: not usable JSON (nested too deeply)") from None
        return rows
    return read_json(p)
