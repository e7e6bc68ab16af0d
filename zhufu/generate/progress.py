"""Progress of a generation run: a rich progress bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("zhufu.generate")


class RunProgress:
    """A rich progress bar on a terminal; a log line every `every` seconds otherwise."""

    def __init__(self, shards: list, state, enabled: bool, every: float = 10.0):
        self.shards, self.state, self.every = shards, state, every
        self.total = sum(s.cells for s in shards)
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = Progress(
                TextColumn("generate"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("generate", total=self.total, info="")
        self.enabled = enabled

    def line(self) -> tuple[int, str]:
        s = self.shards
        done = sum(x.done for x in s)
        requested = sum(x.requested for x in s)
        elapsed = time.monotonic() - self.state.started
        info = (
            f"{requested / elapsed if elapsed else 0:.1f} calls/s, {sum(x.cached for x in s)} cached, "
            f"{sum(x.retries for x in s)} retries, {sum(len(x.failed) for x in s)} failed, "
            f"{sum(x.prompt_tokens for x in s)}+{sum(x.completion_tokens for x in s)} tokens"
        )
        return done, info

    async def run(self) -> None:
        if not self.enabled:
            return
        if self.bar:
            self.bar.start()
        try:
            while True:
                await asyncio.sleep(0.25 if self.bar else self.every)
                self.update()
        finally:
            self.update()
            if self.bar:
                self.bar.stop()

    def update(self) -> None:
        done, info = self.line()
        if self.bar:
            self.bar.update(self.task, completed=done, info=info)
        else:
            log.info("%d/%d cells, %s", done, self.total, info)
