"""One exception family per kind of user mistake. The CLI prints them as one line, no traceback."""


class ZhufuError(Exception):
    """A problem the user can fix: the message names the file, key or row and says what to do."""


class ConfigError(ZhufuError):
    """The configuration is invalid (unknown key, wrong type, missing file it points at)."""


class DataError(ZhufuError):
    """A data file (shard, merged set, imported file) is malformed."""


class ProviderError(ZhufuError):
    """The LLM provider cannot be used (missing key, unreachable endpoint, budget reached)."""


class ModelError(ZhufuError):
    """A model directory is missing or unreadable, or a training tool failed."""
