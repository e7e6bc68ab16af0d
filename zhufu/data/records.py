"""The record format of raw shards and merged.json (schemas/record.schema.yaml), and reading data files."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from zhufu.config import SCHEMAS
from zhufu.errors import DataError
from zhufu.io import read_json, read_text


@cache
def record_validator():
    schema = yaml.safe_load(SCHEMAS.joinpath("record.schema.yaml").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _where(error) -> str:
    path = "/".join(str(p) for p in error.absolute_path)
    return f" (at {path})" if path else ""


def validate_records(records: Any, source: str | Path) -> list[dict]:
    """Check a shard's records against the record schema; DataError names the file and record index."""
    if not isinstance(records, list):
        raise DataError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    validator = record_validator()
    for i, record in enumerate(records):
        error = next(
            iter(sorted(validator.iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))), None
        )
        if error is not None:
            raise DataError(f"{source}: record {i}: {error.message}{_where(error)}")
    return records


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
