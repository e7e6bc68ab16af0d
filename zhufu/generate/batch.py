"""Generation through the provider's batch API (`provider.batch: true`): the same answers as one chat
completion per cell, at the batch price, within the batch's completion window.

One process is one batch (or several, under `batch_options.max_lines` / `max_bytes`): the generate rule's job
for its shard, or `zhufu generate` for every shard it selected. The cells not cached yet become JSONL
lines `{"custom_id": <cache key>, "method": "POST", "url": "/v1/chat/completions", "body": <the direct
path's request>}`; the file is uploaded (`files.create(purpose="batch")`) and the batch created.

Never paying twice rests on the answer cache (zhufu.generate.cache):
- the batch id and its cells are recorded in one transaction the moment `create` returns, before anything
  else; a rerun finds the open batch holding its cells and polls it, and never creates another for them;
- `create` is never retried automatically (a failed create may still have made a batch);
- a finished batch is collected once: its answers, their ledger rows (`via` batch, the batch price) and
  its state `collected` are one transaction;
- a batch the provider no longer knows (404) is marked `lost`, and its cells are sent again;
- an expired, failed or cancelled batch has its answered lines stored; its other cells fail with the
  error file's code (or `batch_<status>` when they have no line), so the failures file and
  `provider.max_failed_share` apply, and a rerun sends only those.

The budget is checked before a batch is created, with its worst case (every line at max_tokens, at the
batch price), and that much stays held against it until the batch is collected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

from zhufu import grid
from zhufu.generate.cache import AnswerCache, Payment
from zhufu.generate.engine import RunState
from zhufu.generate.keys import cell_key, spend_scope
from zhufu.generate.limits import Limits
from zhufu.generate.pricing import cost_of, money, prompt_tokens_estimate
from zhufu.generate.providers import BATCH_DONE, BATCH_ENDPOINT, BatchInfo, BatchLost

log = logging.getLogger("zhufu.generate")

POLL_GROWTH = 1.5


@dataclass
class _Cell:
    stats: object  # the run's ShardStats
    cell: grid.Cell
    key: str
    request: str
    messages: list[dict]
    est_in: int


def batch_lines(cells: list[_Cell], client) -> list[bytes]:
    """Each cell's JSONL line (with its newline)."""
    return [
        (
            json.dumps(
                {
                    "custom_id": c.key,
                    "method": "POST",
                    "url": BATCH_ENDPOINT,
                    "body": client.body(c.messages, c.cell.round),
                },
                ensure_ascii=False,
            )
            + "\n"
        ).encode("utf-8")
        for c in cells
    ]


def split_files(lines: list[bytes], max_lines: int, max_bytes: int) -> list[range]:
    """Consecutive index ranges of `lines`, each at most max_lines lines and max_bytes bytes (a single
    longer line goes alone)."""
    out, start, size = [], 0, 0
    for i, line in enumerate(lines):
        if i > start and (i - start >= max_lines or size + len(line) > max_bytes):
            out.append(range(start, i))
            start, size = i, 0
        size += len(line)
    if start < len(lines):
        out.append(range(start, len(lines)))
    return out


def _answer(body: object) -> tuple[str, int, int] | str:
    """(text, prompt tokens, completion tokens) of an output line's completion, or why it is no answer."""
    try:
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return "unparsable answer: no choices[0].message.content"
    if not isinstance(text, str) or not text.strip():
        return "empty answer"
    usage = body.get("usage") or {}
    return text.strip(), int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _line_reason(line: dict) -> str:
    error = line.get("error") or {}
    if isinstance(error, dict) and error.get("code"):
        return str(error["code"])
    response = line.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    code = ((body or {}).get("error") or {}).get("code") if isinstance(body, dict) else None
    status = response.get("status_code") if isinstance(response, dict) else None
    return f"HTTP {status}" + (f" {code}" if code else "") if status else "error line without a code"


def read_results(client, info: BatchInfo) -> tuple[dict[str, tuple[str, int, int]], dict[str, str]]:
    """A finished batch's answers (custom_id -> text, tokens) and failures (custom_id -> reason)."""
    answers, reasons = {}, {}
    for file_id in (info.output_file_id, info.error_file_id):
        if not file_id:
            continue
        for raw in client.content(file_id).splitlines():
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                cid = line["custom_id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("batch %s: an unreadable line in file %s, ignored", info.id, file_id)
                continue
            response = line.get("response") or {}
            if isinstance(response, dict) and response.get("status_code") == 200 and not line.get("error"):
                got = _answer(response.get("body"))
                if isinstance(got, tuple):
                    answers[cid] = got
                    reasons.pop(cid, None)
                    continue
                reasons.setdefault(cid, got)
            elif cid not in answers:
                reasons[cid] = _line_reason(line)
    return answers, reasons


class BatchRun:
    """The batch path of one generate process over its shards (see the module docstring)."""

    def __init__(self, config: dict, cache: AnswerCache, client, endpoint: str | None):
        self.config = config
        self.p = config["provider"]
        self.opts = self.p["batch_options"]
        self.cache = cache
        self.client = client
        self.scope = spend_scope(self.p, endpoint)
        self.endpoint = endpoint
        self.state = RunState(provider=self.p, limits=Limits(None, None), cache=cache)
        self.todo: dict[str, _Cell] = {}
        self.created = 0

    def run(self, shards: list, matrix) -> RunState:
        for s in shards:
            for cell in grid.iter_cells(self.config, s.style, s.round, matrix):
                prompt = grid.build_prompt(self.config, cell)
                key, request = cell_key(self.config, prompt, self.endpoint)
                if self.cache.get(key) is not None:
                    s.cached += 1
                    s.done += 1
                    continue
                self.todo[key] = _Cell(
                    s, cell, key, request, prompt.messages, prompt_tokens_estimate(prompt.messages)
                )
        for _ in range(2):  # a second pass only when the provider lost a batch (404): its cells go again
            if not self.todo:
                break
            waiting = self.cache.open_batches(self.scope, set(self.todo))
            pending = {k for b in waiting for k in self.cache.batch_keys(b["id"])}
            if waiting:
                log.info(
                    "found %d open batch(es) of an earlier run holding %d of these cells: polling them, "
                    "not sending them again",
                    len(waiting),
                    len(pending & set(self.todo)),
                )
            self._submit([c for k, c in self.todo.items() if k not in pending])
            if not self._poll(self.cache.open_batches(self.scope, set(self.todo))):
                break
        for c in self.todo.values():  # not sent (budget) or lost twice
            c.stats.missing += 1
        return self.state

    # ------------------------------------------------------------------------------------------ create

    def _submit(self, cells: list[_Cell]) -> None:
        if not cells:
            return
        lines = batch_lines(cells, self.client)
        budget = self.p.get("budget")
        for part in split_files(lines, self.opts["max_lines"], self.opts["max_bytes"]):
            chunk = [cells[i] for i in part]
            data = b"".join(lines[i] for i in part)
            worst = sum(cost_of(self.p, c.est_in, self.p["max_tokens"], batch=True) for c in chunk)
            hold = None
            if budget is not None:
                hold = None if self.state.budget_reached else self.cache.hold(self.scope, worst, budget)
                if hold is None:
                    self.state.budget_reached = True
                    log.warning(
                        "budget %s: a batch of %d requests (worst case %s) does not fit; not created",
                        money(self.p, budget),
                        len(chunk),
                        money(self.p, worst),
                    )
                    continue
            sha = hashlib.sha256(data).hexdigest()
            try:
                file_id = self.client.upload(data, f"zhufu-{sha[:16]}.jsonl")
                info = self.client.create(file_id, self.opts["completion_window"])
            except BaseException:
                if hold is not None:
                    self.cache.release(hold)
                raise
            # Before anything else: a kill from here on leaves a batch that the rerun finds and polls.
            self.cache.record_batch(
                info.id,
                self.scope,
                file_id,
                sha,
                info.status,
                [(c.key, c.request, c.stats.name) for c in chunk],
                worst,
                release=hold,
            )
            self.created += 1
            log.info(
                "batch %s created: %d requests, %d bytes, worst case %s (window %s)",
                info.id,
                len(chunk),
                len(data),
                money(self.p, worst),
                self.opts["completion_window"],
            )

    # ------------------------------------------------------------------------------------------ poll

    def _poll(self, batches: list[dict]) -> bool:
        """Poll until every batch is finished and collected; True when one was lost (its cells go again)."""
        waiting = {b["id"]: b["lines"] for b in batches}
        delay, lost, started = self.opts["poll_s"], False, time.monotonic()
        while waiting:
            done_lines = 0
            for bid in list(waiting):
                try:
                    info = self.client.retrieve(bid)
                except BatchLost:
                    self.cache.mark_batch_lost(bid)
                    log.warning(
                        "batch %s: the provider does not know it (404); its cells are sent again", bid
                    )
                    del waiting[bid]
                    lost = True
                    continue
                if info is None:  # this poll failed in passing; the next one asks again
                    continue
                if info.status in BATCH_DONE:
                    self._collect(info)
                    del waiting[bid]
                else:
                    self.cache.set_batch_status(bid, info.status)
                    done_lines += info.completed + info.failed
            if waiting:
                log.info(
                    "batches: %d open (%d/%d requests done), %.0fs so far; next poll in %.1fs",
                    len(waiting),
                    done_lines,
                    sum(waiting.values()),
                    time.monotonic() - started,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * POLL_GROWTH, self.opts["poll_max_s"])
        return lost

    def _collect(self, info: BatchInfo) -> None:
        answers, reasons = read_results(self.client, info)
        cells = self.cache.batch_cells(info.id)
        currency = (self.p.get("price") or {}).get("currency", "")
        rows = []
        for key, request in cells.items():
            if key in answers:
                text, pt, ct = answers[key]
                cost = cost_of(self.p, pt, ct, batch=True)
                rows.append((key, request, text, pt, ct, Payment(*self.scope, cost, currency, "batch")))
        stored = self.cache.collect_batch(info.id, info.status, rows)
        missing = len(cells) - len(answers.keys() & cells.keys())
        log.info(
            "batch %s %s: %d answered, %d not%s",
            info.id,
            info.status,
            len(cells) - missing,
            missing,
            "" if stored else " (collected already by another job)",
        )
        paid = {row[0]: row for row in rows} if stored else {}
        for key in cells:
            c = self.todo.pop(key, None)
            if c is None:
                continue
            if key in answers:
                c.stats.done += 1
                if key in paid:
                    _, _, _, pt, ct, payment = paid[key]
                    c.stats.requested += 1
                    c.stats.prompt_tokens += pt
                    c.stats.completion_tokens += ct
                    c.stats.cost += payment.cost
                    self.state.spent += payment.cost
                continue
            reason = reasons.get(key) or (
                f"batch_{info.status}" if info.status != "completed" else "no line in the batch's output"
            )
            c.stats.failed.append((c.cell, reason))


def generate_by_batch(config: dict, shards: list, matrix, cache: AnswerCache, client, endpoint) -> RunState:
    """Answer the shards' uncached cells through the batch API; the run's state for the summary."""
    run = BatchRun(config, cache, client, endpoint)
    state = run.run(shards, matrix)
    log.info("batch API: %d batch(es) created by this run", run.created)
    return state
