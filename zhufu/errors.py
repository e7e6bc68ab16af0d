"""One exception family per kind of user mistake. The CLI prints them as one line, no traceback.

A message never shows an API key: anything in it that looks like one (see `looks_like_key`) is replaced
by `[key hidden]`, so a key pasted into the wrong config field is not echoed into a terminal or a log.
"""

import re

# sk-… (OpenAI, DeepSeek, Anthropic, Moonshot…), ZhipuAI's <32 hex>.<secret>, and any long token that mixes
# upper case, lower case and digits (Google's AIza…, most bearer tokens). Record ids and hashes are lower
# case hex and are left alone.
_KEY = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{12,}"
    r"|\b[0-9a-fA-F]{32}\.[A-Za-z0-9]{8,}"
    r"|(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*[a-z])(?=[A-Za-z0-9_\-]*[A-Z])(?=[A-Za-z0-9_\-]*[0-9])"
    r"[A-Za-z0-9_\-]{24,}"
)
KEY_HIDDEN = "[key hidden]"


def looks_like_key(text: str) -> bool:
    """True when `text` holds something shaped like an API key (and so must not be shown)."""
    return bool(_KEY.search(text))


def hide_keys(text: str) -> str:
    return _KEY.sub(KEY_HIDDEN, text)


def not_utf8(error: UnicodeDecodeError) -> str:
    """The one-line reason for a file that is not UTF-8 (most often GBK from a Chinese Excel or Notepad)."""
    return (
        f"not UTF-8 (byte 0x{error.object[error.start]:02x} at offset {error.start}); save it as UTF-8, "
        "e.g. `iconv -f GBK -t UTF-8 FILE > NEW` or Excel's 'CSV UTF-8'"
    )


class ZhufuError(Exception):
    """A problem the user can fix: the message names the file, key or row and says what to do."""

    def __str__(self) -> str:
        return hide_keys(super().__str__())


class ConfigError(ZhufuError):
    """The configuration is invalid (unknown key, wrong type, missing file it points at)."""


class DataError(ZhufuError):
    """A data file (shard, merged set, imported file) is malformed."""


class ProviderError(ZhufuError):
    """The LLM provider cannot be used (missing key, unreachable endpoint, budget reached)."""


class ModelError(ZhufuError):
    """A model directory is missing or unreadable, or a training tool failed."""
