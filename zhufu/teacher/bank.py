"""The offline teacher's phrase bank (resources/phrases.yaml): read once, checked, with errors that name the key."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from zhufu.config import RESOURCES, package_file
from zhufu.errors import ConfigError, not_utf8
from zhufu.io import file_digest

DEFAULT_PHRASES = package_file(RESOURCES, "phrases.yaml")


def bank_digest(path: str | Path | None = None) -> str:
    """A short hash of the phrase bank's bytes (default: the shipped one): part of the offline teacher's
    cache key, so an edited bank gives new answers instead of the cached ones of the old bank."""
    p = Path(path or DEFAULT_PHRASES)
    stat = p.stat()
    return _digest(str(p.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return file_digest(path).hexdigest()[:16]


@lru_cache(maxsize=8)
def load_phrases(path: str | Path = DEFAULT_PHRASES) -> dict:
    """Read and check the phrase bank; a ConfigError names the file and the missing key."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            bank = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: phrase bank not found (pass --phrases PATH or restore resources/phrases.yaml)"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: {not_utf8(e)}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror or e})") from None
    if not isinstance(bank, dict):
        raise ConfigError(f"{p}: expected a mapping with categories, recipients, scenes, styles, general")
    for key in ("categories", "recipients", "scenes", "styles", "general"):
        if not isinstance(bank.get(key), dict) or not bank[key]:
            raise ConfigError(f"{p}: key '{key}' is missing or empty")
        for name, entry in bank[key].items():
            if key == "general":
                ok = isinstance(entry, list) and all(isinstance(x, str) for x in entry)
                if not ok:
                    raise ConfigError(f"{p}: general.{name} must be a list of phrases")
                continue
            if not isinstance(entry, dict):
                raise ConfigError(f"{p}: {key}.{name} must be a mapping")
            for field, value in entry.items():
                if isinstance(value, list) and not all(isinstance(x, str) for x in value):
                    raise ConfigError(f"{p}: {key}.{name}.{field} must be a list of strings")
    for name, cat in bank["categories"].items():
        if not cat.get("wish"):
            raise ConfigError(f"{p}: categories.{name}.wish must list at least one phrase")
    for name, entry in bank["recipients"].items():
        if entry.get("category") not in bank["categories"]:
            raise ConfigError(
                f"{p}: recipients.{name}.category {entry.get('category')!r} is not in categories"
            )
    for name, scene in bank["scenes"].items():
        for key in ("greet", "wish", "cute", "formal_open", "formal"):
            if not scene.get(key):
                raise ConfigError(f"{p}: scenes.{name}.{key} must list at least one phrase")
    return bank
