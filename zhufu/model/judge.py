"""An optional LLM judge of the evaluation's answers (`evaluate.judge`, off by default).

It reads `results/eval/generations.jsonl` (the evaluate rule's answers, base and tuned), asks an LLM to
score each answer 1–5 for its recipient, scene and style (an answer of the off-task group: whether it answers
the request, OFF_TASK_RUBRIC), and summarises the scores like the other metrics:
`judge_pass` (the share scored at least `pass_score`) and `judge_score` (the mean score), per style and
model, with bootstrap intervals and a verdict (zhufu.model.evaluate.summarise).

It goes through the provider layer that manufactures the data:
- the judge's provider is `evaluate.judge.provider` merged over `provider:` (so by default the run's own
  provider; the offline teacher answers with a rubric, see zhufu.teacher.judge), at temperature 0;
- every verdict is kept in the persistent answer cache, so a rerun, or a second judge of the same answers,
  pays nothing again; every paid call goes into the spend ledger (`zhufu spend`), and the provider's
  `budget` holds across the judge and generation together;
- before any call, the estimate of what is not cached yet (calls, tokens, worst-case cost) is logged and
  written to judge.json, and the judge refuses to start when it exceeds `evaluate.judge.max_cost`.
  `zhufu judge --estimate` prints it and calls nothing.

Files: `judge.jsonl` (one verdict per answer), `judge.json` (settings, estimate, the groups) and the table in
`judge.md` and `judge.html` (in `snakemake --report` when the judge ran).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

from zhufu.config import add_configfile_argument, judge_provider, load_config
from zhufu.data.records import read_rows
from zhufu.errors import ProviderError
from zhufu.generate.cache import AnswerCache, cache_key, canonical_request, open_readonly
from zhufu.generate.engine import RunState, call_with_retries, store_paid
from zhufu.generate.keys import spend_scope
from zhufu.generate.limits import Limits
from zhufu.generate.local import serving
from zhufu.generate.pricing import cost_of, money, prompt_tokens_estimate
from zhufu.generate.providers import (
    CallError,
    make_provider,
    provider_identity,
    resolve_api_key,
    sampling_params,
)
from zhufu.io import write_json, write_jsonl, write_text
from zhufu.model.summary import OFF_TASK_SOURCE, summarise, table_html, table_markdown

log = logging.getLogger(__name__)

METRICS = ("judge_pass", "judge_score")
SYSTEM = "你是一位严格、公正的中文祝福语评审。"
OFF_TASK_SYSTEM = "你是一位严格、公正的中文助手回答评审。"
RUBRIC = (
    "评分标准（1–5分）：5 = 写给该对象、切合该场景和风格、通顺得体；4 = 大体符合，只有小瑕疵；"
    "3 = 基本可用，但对象、场景或风格有一处不符；2 = 多处不符；1 = 文不对题、不通顺或不是祝福。\n"
    '只返回一个JSON对象：{"score": 1到5的整数, "reason": "一句话理由"}'
)
# the off-task group (requests that are not blessings): does the answer answer the request?
OFF_TASK_RUBRIC = (
    "评分标准（1–5分）：5 = 切题地回答了请求，内容正确、通顺；4 = 回答了请求，只有小瑕疵；3 = 部分回答了请求；"
    "2 = 基本没有回答请求；1 = 答非所问（例如用一句祝福语代替回答）或不通顺。\n"
    '只返回一个JSON对象：{"score": 1到5的整数, "reason": "一句话理由"}'
)
_JSON = re.compile(r"\{.*\}", re.S)


class _Stats:
    retries = 0


def judge_messages(row: dict, config: dict) -> list[dict]:
    if row.get("source") == OFF_TASK_SOURCE:
        user = "\n".join(
            ["请评价下面这个回答是否回答了请求。", f"【请求】{row['input']}", f"【待评回答】{row['output']}"]
        )
        return [
            {"role": "system", "content": OFF_TASK_SYSTEM},
            {"role": "user", "content": user + "\n" + OFF_TASK_RUBRIC},
        ]
    style = config["styles"].get(row.get("style") or "")
    band = f"{style.get('min_chars', 0)}–{style['max_chars']}字" if style else "不限"
    user = "\n".join(
        [
            "请评价下面这条祝福语。",
            f"【请求】{row['input']}",
            f"【对象】{row.get('recipient') or '未指定'}",
            f"【场景】{row.get('scene') or '未指定'}",
            f"【风格】{row.get('style') or '未指定'}" + (f"：{style['prompt']}" if style else ""),
            f"【字数】{band}",
            f"【待评回答】{row['output']}",
            RUBRIC,
        ]
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> tuple[int | None, str]:
    """(score 1–5, reason) from the judge's answer; (None, why) when it holds no usable score."""
    m = _JSON.search(text)
    try:
        data = json.loads(m[0]) if m else None
    except json.JSONDecodeError:
        data = None
    score = data.get("score") if isinstance(data, dict) else None
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score.strip())
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        return None, f"no score 1–5 in the judge's answer: {text[:120]!r}"
    return score, str(data.get("reason", ""))


def _requests(rows: list[dict], config: dict, provider: dict) -> list[tuple[str, str, list[dict]]]:
    identity = provider_identity(provider)
    params = sampling_params(provider)
    out = []
    for row in rows:
        messages = judge_messages(row, config)
        out.append(
            (cache_key(identity, messages, params), canonical_request(identity, messages, params), messages)
        )
    return out


def estimate(rows: list[dict], config: dict, cache_path: str | Path, requests=None) -> dict:
    """What judging `rows` would cost: calls not cached yet, their tokens and worst-case cost. `requests`:
    `_requests(rows, …)` when the caller has built them already."""
    provider = judge_provider(config)
    requests = requests if requests is not None else _requests(rows, config, provider)
    cache = open_readonly(cache_path)
    try:
        todo = [r for r in requests if cache is None or r[0] not in cache]
    finally:
        if cache is not None:
            cache.close()
    prompt = sum(prompt_tokens_estimate(m) for _, _, m in todo)
    completion = len(todo) * provider["max_tokens"]
    cost = cost_of(provider, prompt, completion)
    return {
        "provider": provider["kind"],
        "model": provider["model"],
        "answers": len(rows),
        "cached": len(rows) - len(todo),
        "calls": len(todo),
        "prompt_tokens": prompt,
        "completion_tokens_max": completion,
        "cost_max": cost,
        "currency": (provider.get("price") or {}).get("currency", ""),
        "text": (
            f"judge ({provider['kind']} {provider['model']}): {len(rows)} answers, {len(rows) - len(todo)} "
            f"cached, {len(todo)} to request: about {prompt} tokens in, at most {completion} out, "
            f"at most {money(provider, cost)}"
        ),
    }


async def _judge_all(provider: dict, todo, cache: AnswerCache, client) -> list[str]:
    """Ask for every (key, request, messages) in `todo`; store each verdict as it comes. Failures listed."""
    scope = spend_scope(provider)
    limits = Limits(provider.get("rpm"), provider.get("tpm"), shared=cache, scope=scope)
    state = RunState(provider=provider, limits=limits, cache=cache, client=client)
    budget = provider.get("budget")
    queue = list(todo)
    failures: list[str] = []

    async def worker():
        while queue:
            key, request, messages = queue.pop()
            est_in = prompt_tokens_estimate(messages)
            hold = None
            if budget is not None:
                hold = cache.hold(scope, cost_of(provider, est_in, provider["max_tokens"]), budget)
                if hold is None:
                    failures.append(f"budget {money(provider, budget)} reached")
                    continue
            try:
                answer = await call_with_retries(state, messages, est_in + provider["max_tokens"], _Stats())
            except CallError as e:
                if hold is not None:
                    cache.release(hold)
                failures.append(e.reason)
                continue
            store_paid(state, key, request, answer, scope, hold)

    try:
        await asyncio.gather(*(worker() for _ in range(provider["concurrency"])))
    finally:
        await client.aclose()
    return failures


def judge(rows: list[dict], config: dict, cache_path: str | Path, outputs: dict) -> dict:
    """Estimate, check the cap, ask for what is not cached, score, summarise, write `outputs`
    (verdicts, summary, table_md, table_html)."""
    provider = judge_provider(config)
    judge_cfg = config["evaluate"]["judge"]
    requests = _requests(rows, config, provider)
    plan = estimate(rows, config, cache_path, requests)
    log.info("%s", plan["text"])
    cap = judge_cfg.get("max_cost")
    if cap is not None and plan["cost_max"] > cap:
        raise ProviderError(
            f"evaluate.judge.max_cost: {plan['text']}, above the cap of {money(provider, cap)}; "
            "raise the cap or judge fewer answers (evaluate.samples)"
        )
    with AnswerCache(cache_path) as cache:
        todo = [r for r in requests if r[0] not in cache]
        failures: list[str] = []
        if todo:
            api_key = resolve_api_key(provider)
            for noisy in ("httpx", "openai", "zhipuai"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
            with serving(provider, api_key) as (url, key):  # the offline or a local teacher, started here
                failures = asyncio.run(_judge_all(provider, todo, cache, make_provider(provider, key, url)))
        if failures:
            shown = "; ".join(sorted(set(failures))[:5])
            raise ProviderError(
                f"judge: {len(failures)} of {len(todo)} calls failed ({shown}); the verdicts so far are cached, "
                "a rerun asks only for the rest"
            )
        verdicts = [cache.get(key).text for key, _, _ in requests]
    scored = []
    for row, text in zip(rows, verdicts, strict=True):
        score, reason = parse_verdict(text)
        passed = None if score is None else score >= judge_cfg["pass_score"]
        scored.append(
            {
                **row,
                "judge": {"score": score, "reason": reason},
                "scores": {"judge_pass": passed, "judge_score": score},
            }
        )
    ev = config["evaluate"]
    groups = summarise(
        scored, list(config["styles"]), resamples=ev["bootstrap"], seed=ev["seed"], metrics=METRICS
    )
    unparsed = sum(r["judge"]["score"] is None for r in scored)
    summary = {
        "settings": {
            "provider": provider["kind"],
            "model": provider["model"],
            "pass_score": judge_cfg["pass_score"],
            "offline_rubric": provider["kind"] == "offline",
        },
        "estimate": {k: v for k, v in plan.items() if k != "text"},
        "unparsed": unparsed,
        "groups": groups,
    }
    write_jsonl(outputs["verdicts"], [{k: v for k, v in r.items() if k != "scores"} for r in scored])
    write_json(outputs["summary"], summary)
    title = f"Zhufu evaluation: LLM judge ({provider['kind']} {provider['model']}), base vs tuned"
    if provider["kind"] == "offline":
        title += " (offline rubric, not an LLM)"
    write_text(outputs["table_md"], table_markdown(groups, title))
    write_text(outputs["table_html"], table_html(groups, title))
    return summary


def output_files(outdir: str | Path) -> dict:
    d = Path(outdir)
    return {
        "verdicts": d / "judge.jsonl",
        "summary": d / "judge.json",
        "table_md": d / "judge.md",
        "table_html": d / "judge.html",
    }


def add_judge_arguments(parser) -> None:
    add_configfile_argument(parser)
    parser.add_argument(
        "-o", "--outdir", default="results/eval", help="folder of generations.jsonl and the judge's files"
    )
    parser.add_argument("--estimate", action="store_true", help="print what judging would cost; call nothing")


def run_judge(args) -> int:
    config = load_config(*args.configfiles)
    rows = read_rows(Path(args.outdir) / "generations.jsonl")
    if args.estimate:
        print(estimate(rows, config, config["cache"])["text"])
        return 0
    judge(rows, config, config["cache"], output_files(args.outdir))
    print(Path(output_files(args.outdir)["table_md"]).read_text(encoding="utf-8"))
    return 0
