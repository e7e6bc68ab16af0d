"""Merge raw shards: every record of every shard is validated against the record schema; ids must be unique."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from zhufu.data.records import read_records
from zhufu.errors import DataError
from zhufu.io import write_json

log = logging.getLogger(__name__)


def shard_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the *.json files below each directory (sorted, so merged order is stable)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.json") if not f.name.startswith("."))
            if not found:
                raise DataError(f"{p}: no *.json shards below this directory")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return files


def merge(paths: Iterable[str | Path], out: str | Path) -> list[dict]:
    """Validate and concatenate shards (in the order given), keeping id and meta; ids must be unique."""
    merged: list[dict] = []
    seen: dict[str, tuple[Path, int]] = {}
    for path in shard_files(paths):
        records = read_records(path)
        for i, record in enumerate(records):
            other = seen.get(record["id"])
            if other is not None:
                raise DataError(
                    f"duplicate id {record['id']}: {other[0]} record {other[1]} and {path} record {i}; "
                    "shards of one merge must not overlap (was a shard copied or imported twice?)"
                )
            seen[record["id"]] = (path, i)
            merged.append(record)
        log.info("%s: %d records", path, len(records))
    write_json(out, merged, indent=1)
    log.info("merged %d records into %s", len(merged), out)
    return merged


def add_merge_arguments(parser) -> None:
    parser.add_argument("shards", nargs="+", help="shard files, or directories searched for *.json")
    parser.add_argument("-o", "--output", required=True, help="merged JSON to write")


def run_merge(args) -> int:
    merged = merge(args.shards, args.output)
    print(f"{args.output}: {len(merged)} records")
    return 0
