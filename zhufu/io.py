"""Atomic file and directory writes (a reader never sees a partial file where a complete one is expected),
and reading JSON with errors that name the file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import GeneratorType
from typing import Any

from zhufu.errors import DataError, not_utf8


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a result is as readable as any file
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """`json.dumps(obj, ensure_ascii=False, indent=indent)` and a newline, byte for byte, written as it is
    encoded: a large list never exists whole as one string (at 1M records train.json and the clean report
    were each a string of hundreds of megabytes and, before it, a list of tens of millions of pieces)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        if indent is None:
            for chunk in json.JSONEncoder(ensure_ascii=False).iterencode(obj):
                fh.write(chunk)
        else:
            dump_indented(obj, " " * indent if isinstance(indent, int) else indent, fh.write)
        fh.write("\n")


def _float_json(o: float) -> str:
    if o != o:
        return "NaN"
    if o in (float("inf"), float("-inf")):
        return "Infinity" if o > 0 else "-Infinity"
    return float.__repr__(o)


def _key_json(k: Any) -> str:
    if k.__class__ is str:
        return k
    if isinstance(k, float):
        return _float_json(k)
    if k is True or k is False or k is None:
        return {True: "true", False: "false", None: "null"}[k]
    if isinstance(k, int):
        return int.__repr__(k)
    raise TypeError(f"keys must be str, int, float, bool or None, not {k.__class__.__name__}")


def dump_indented(obj: Any, indent: str, write, flush_parts: int = 1 << 14) -> None:
    """The text of json.dumps(obj, ensure_ascii=False, indent=indent), passed to `write` in pieces as it is
    made. The stdlib encodes indented JSON in pure Python, one generator per level of nesting; this appends
    to one list instead (strings still go through the C string encoder): 1.7 times as fast on merged records. A value of
    any other class than dict, list, tuple, str, int, float, bool and None is left to json.dumps (its
    newlines are all structural, so indenting them by the level gives the nested text); a generator is
    written as the list of what it yields, consumed as it is written."""
    parts: list[str] = []
    append = parts.append
    enc = json.encoder.encode_basestring

    def value(o: Any, pad: str) -> None:
        cls = o.__class__
        if cls is str:
            append(enc(o))
        elif cls is dict:
            if not o:
                append("{}")
                return
            inner = pad + indent
            sep = "{" + inner
            for k, v in o.items():
                head = sep + enc(k if k.__class__ is str else _key_json(k)) + ": "
                if v.__class__ is str:  # most values: one piece, no call
                    append(head + enc(v))
                else:
                    append(head)
                    value(v, inner)
                sep = "," + inner
            append(pad + "}")
        elif cls is list or cls is tuple or cls is GeneratorType:
            inner = pad + indent
            sep = "[" + inner
            for v in o:
                if v.__class__ is str:
                    append(sep + enc(v))
                else:
                    append(sep)
                    value(v, inner)
                sep = "," + inner
                if len(parts) > flush_parts:
                    write("".join(parts))
                    parts.clear()
            append("[]" if sep[0] == "[" else pad + "]")
        elif o is None:
            append("null")
        elif o is True:
            append("true")
        elif o is False:
            append("false")
        elif cls is int:
            append(int.__repr__(o))
        elif cls is float:
            append(_float_json(o))
        else:
            append(json.dumps(o, ensure_ascii=False, indent=indent).replace("\n", pad))

    value(obj, "\n")
    write("".join(parts))


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_text(path: str | os.PathLike, *, error: type[Exception] = DataError, what: str = "file") -> str:
    """A UTF-8 text file, or one line naming it: not found, not UTF-8 (where), or not readable."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise error(f"{p}: {not_utf8(e)}") from None
    except OSError as e:
        raise error(f"{p}: cannot be read ({e.strerror or e})") from None


def read_json(path: str | os.PathLike) -> Any:
    p = Path(path)
    text = read_text(p)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise DataError(f"{p}: not usable JSON (nested too deeply)") from None


def fresh_dir(out: str | os.PathLike) -> tuple[Path, Path]:
    """(out, an empty temporary path beside it): build the directory there, then `replace_dir` it into place."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return out, tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished directory `tmp` in the place of `out` (a directory, file or link, or nothing)."""
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def file_digest(path: str | os.PathLike, h=None):
    """A hash object (sha256 unless `h` is given) updated with the bytes of the file, read in chunks."""
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h
