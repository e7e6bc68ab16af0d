"""The shared frame of the thin scripts under scripts/ that Snakemake's `script:` directive runs."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from zhufu.errors import ZhufuError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def rule_step(snakemake, name: str) -> Iterator[None]:
    """Log to the rule's log file; a user's mistake (ZhufuError) is one line and exit 1, anything else a
    logged traceback."""
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format=LOG_FORMAT)
    log = logging.getLogger(f"zhufu.{name}")
    try:
        yield
    except ZhufuError as e:
        log.error("%s", e)
        print(f"zhufu {name}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        log.exception("%s failed", name)
        raise
