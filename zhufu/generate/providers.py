"""LLM providers behind one small async interface: `await provider.complete(messages) -> Answer`.

Kinds:
- ``openai``: any OpenAI-compatible endpoint (DeepSeek, SiliconFlow, vLLM, Ollama, llama.cpp) via ``AsyncOpenAI``.
- ``offline``: the same client pointed at Zhufu's offline teacher (a phrase bank on 127.0.0.1, not an LLM).
- ``local``: the same client pointed at a model server the run starts itself (zhufu.generate.local).
- ``zhipuai``: glm-4 via the ``zhipuai`` SDK, which is synchronous, so calls run in a thread pool.

The SDKs' own retries are disabled (``max_retries=0``): retries, backoff and rate limits are owned by
`zhufu.generate.run`, which needs to see every failure to count it and to honour Retry-After across workers.
Every failure is turned into a `CallError` that says whether it is worth retrying. Each SDK (openai,
zhipuai, httpx) is imported when its provider is made: a run needs only the configured one, and zhipuai
alone takes about a second to import.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import email.utils
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from zhufu.config import api_key_env_problem
from zhufu.errors import ProviderError

OFFLINE_API_KEY = "offline"
ZHIPUAI_DEFAULT_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"
# Statuses worth another attempt: timeouts, conflicts, rate limits and server errors.
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529}


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int


class CallError(Exception):
    """One failed attempt. `retryable` False means retrying cannot help (bad key, unknown model)."""

    def __init__(
        self, reason: str, *, retryable: bool, retry_after: float | None = None, status: int | None = None
    ):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class Provider(Protocol):
    """An LLM endpoint as the call loop sees it (OpenAIProvider, ZhipuProvider, or a test's own)."""

    async def complete(self, messages: list[dict], sample: int = 0) -> Answer:
        """One chat completion; raise CallError when the attempt failed."""
        ...

    async def aclose(self) -> None: ...


RETRY_AFTER_MAX_S = 120.0


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def parse_retry_after(headers: Any, max_s: float = RETRY_AFTER_MAX_S) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after`, clamped to [0, max_s]; None if absent or
    unreadable (then the normal backoff applies).

    `retry-after` is seconds or an HTTP date (RFC 9110); anything else (`soon`, `inf`) is ignored, and a
    huge value is cut to `max_s`, so one server's header can never stall every worker for hours.
    """
    if headers is None:
        return None
    wait = None
    ms = headers.get("retry-after-ms")
    if ms and (value := _seconds(str(ms).strip())) is not None:
        wait = value / 1000
    text = str(headers.get("retry-after") or "").strip()
    if wait is None and text:
        wait = _seconds(text)
        if wait is None:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError, OverflowError):
                when = None
            if when is not None:
                if when.tzinfo is None:  # RFC 9110 dates are GMT
                    when = when.replace(tzinfo=datetime.UTC)
                wait = max(0.0, when.timestamp() - time.time())
    return None if wait is None else min(wait, max_s)


def sampling_params(provider: dict) -> dict:
    """The request parameters that change the answer; they are sent, and they are part of the cache key."""
    params = {"temperature": provider["temperature"], "max_tokens": provider["max_tokens"]}
    if provider.get("top_p") is not None:
        params["top_p"] = provider["top_p"]
    return params


def provider_identity(provider: dict, endpoint: str | None = None) -> dict:
    """Who answers, for the cache key and the spend ledger: kind, endpoint host (not port, not key), model.

    `endpoint` is the base URL that is really called when it is not the config's own (`--base-url`):
    its answers are then cached under its host, never under the config's provider. The offline teacher
    (kind offline, whichever of its instances answers) runs on a random port of 127.0.0.1, so its endpoint
    is left out entirely, and the hash of its phrase bank (resources/phrases.yaml) stands in for a model's
    weights; for remote kinds the host tells DeepSeek's `deepseek-chat` from a local vLLM or a test server
    serving that name.
    """
    identity = {"kind": provider["kind"], "model": provider["model"]}
    if provider["kind"] == "local" and not endpoint:
        from zhufu.generate.local import model_digest  # hashes the weights: only for a local teacher

        identity["weights"] = model_digest(provider["model_path"])  # wherever and on whichever port served
    elif provider["kind"] == "offline":
        from zhufu.teacher.bank import bank_digest  # the teacher's package is needed only offline

        identity["bank"] = bank_digest()  # an edited phrase bank answers anew
    else:
        url = (
            endpoint
            or provider.get("base_url")
            or (ZHIPUAI_DEFAULT_BASE_URL if provider["kind"] == "zhipuai" else "")
        )
        identity["host"] = (urlsplit(url).hostname or "").lower()
    return identity


# Where the key went when the workflow submits jobs to a cluster (hide_api_key_from_jobs).
KEY_DIR_ENV = "ZHUFU_KEY_DIR"


def hide_api_key_from_jobs(provider: dict) -> str | None:
    """Take the API key out of this process's environment before any cluster job is submitted.

    The SLURM plugin submits with `sbatch --export=ALL`, which copies the submitting environment into
    every job and into SLURM's stored job state. The main Snakemake process calls this at start-up when
    it runs a cluster executor: the key moves to a 0600 file in a private 0700 directory of this host's
    temporary space, removed when the process exits, and only that directory's path stays in the
    environment. The generate jobs (local rules, on this host) read the key from there; a compute job
    on another node has nothing to read, and no job's environment or script holds the key.
    """
    env = provider.get("api_key_env")
    if provider["kind"] in ("offline", "local") or not env or env not in os.environ:
        return None
    key = os.environ.pop(env)
    directory = tempfile.mkdtemp(prefix="zhufu-key-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, env)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    os.environ[KEY_DIR_ENV] = directory
    return directory


def _key_from_env(env: str) -> str:
    key = os.environ.get(env, "").strip()
    directory = os.environ.get(KEY_DIR_ENV)
    if not key and directory and os.path.isfile(os.path.join(directory, env)):
        with open(os.path.join(directory, env), encoding="utf-8") as fh:
            key = fh.read().strip()
    return key


def resolve_api_key(provider: dict) -> str:
    """The key from the env var named by provider.api_key_env, checked before any request is made."""
    if provider["kind"] in ("offline", "local"):
        return OFFLINE_API_KEY  # a local teacher gets its own token when it starts (zhufu.generate.local)
    env = provider.get("api_key_env")
    if not env:
        raise ProviderError(
            f"provider.api_key_env is not set for kind '{provider['kind']}': name the environment variable "
            "that holds the key (e.g. DEEPSEEK_API_KEY), never the key itself"
        )
    if problem := api_key_env_problem(env):
        raise ProviderError(f"provider.api_key_env {problem}")
    key = _key_from_env(env)
    if not key:
        raise ProviderError(
            f"environment variable {env} is not set (provider.api_key_env): export {env}=<your key>"
        )
    return key


def _status_error(status: int, headers: Any, body: str, max_s: float = RETRY_AFTER_MAX_S) -> CallError:
    snippet = " ".join(str(body).split())[:160]
    return CallError(
        f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}",
        retryable=status in RETRYABLE_STATUS or status >= 500,
        retry_after=parse_retry_after(headers, max_s),
        status=status,
    )


def _answer_from_completion(completion: Any) -> Answer:
    """Text and usage from an OpenAI-shaped completion; an empty or missing answer is a failure."""
    try:
        choice = completion.choices[0]
        text = choice.message.content
    except (AttributeError, IndexError, TypeError):
        raise CallError("unparsable answer: no choices[0].message.content", retryable=True) from None
    if not isinstance(text, str) or not text.strip():
        raise CallError("empty answer", retryable=True)
    usage = getattr(completion, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    return Answer(text.strip(), prompt_tokens, completion_tokens)


class OpenAIProvider:
    """`openai` and `offline` kinds: the real AsyncOpenAI client, its retries off."""

    def __init__(self, provider: dict, api_key: str, base_url: str):
        import httpx
        import openai

        self._openai = openai
        self._httpx = httpx
        self.model = provider["model"]
        self.params = sampling_params(provider)
        self.retry_after_max_s = provider.get("retry_after_max_s", RETRY_AFTER_MAX_S)
        self.client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=provider["timeout_s"]
        )
        # The offline teacher answers the same request the same way; `seed` (the round, which is also in
        # the cache key) makes the n-th draw of a prompt a different answer, as sampling does for an LLM.
        self.seeded = provider["kind"] == "offline"

    async def complete(self, messages: list[dict], sample: int = 0) -> Answer:
        openai = self._openai
        extra = {"seed": sample} if self.seeded else {}
        try:
            completion = await self.client.chat.completions.create(
                model=self.model, messages=messages, **self.params, **extra
            )
        except openai.APIStatusError as e:
            raise _status_error(
                e.status_code, e.response.headers, e.response.text, self.retry_after_max_s
            ) from None
        except openai.APITimeoutError:
            raise CallError("timeout", retryable=True) from None
        except openai.APIConnectionError as e:
            raise CallError(f"connection error ({e.__cause__ or e})", retryable=True) from None
        except (openai.APIResponseValidationError, ValueError) as e:
            # A body that is not JSON (json.JSONDecodeError is a ValueError) or not a completion.
            raise CallError(f"unparsable answer ({type(e).__name__})", retryable=True) from None
        return _answer_from_completion(completion)

    async def aclose(self) -> None:
        await self.client.close()


class ZhipuProvider:
    """`zhipuai` kind: the synchronous SDK in a thread pool as wide as the concurrency."""

    def __init__(self, provider: dict, api_key: str, base_url: str | None):
        from zhipuai import ZhipuAI

        self.model = provider["model"]
        self.params = sampling_params(provider)
        self.retry_after_max_s = provider.get("retry_after_max_s", RETRY_AFTER_MAX_S)
        self.client = ZhipuAI(
            api_key=api_key,
            base_url=base_url or ZHIPUAI_DEFAULT_BASE_URL,
            max_retries=0,
            timeout=provider["timeout_s"],
        )
        self.pool = ThreadPoolExecutor(max_workers=provider["concurrency"], thread_name_prefix="zhipuai")

    def _call(self, messages: list[dict]) -> Answer:
        import httpx
        import zhipuai
        from zhipuai.core import _errors as zerr

        # The SDK rewrites message contents in place, so it gets a copy.
        msgs = [dict(m) for m in messages]
        try:
            completion = self.client.chat.completions.create(model=self.model, messages=msgs, **self.params)
        except zerr.APIStatusError as e:
            raise _status_error(
                e.status_code, e.response.headers, e.response.text, self.retry_after_max_s
            ) from None
        except (zerr.APITimeoutError, httpx.TimeoutException):
            raise CallError("timeout", retryable=True) from None
        except (zerr.APIConnectionError, httpx.TransportError) as e:
            raise CallError(f"connection error ({e.__cause__ or e})", retryable=True) from None
        except (zerr.APIResponseError, zhipuai.ZhipuAIError, ValueError) as e:
            raise CallError(f"unparsable answer ({type(e).__name__})", retryable=True) from None
        return _answer_from_completion(completion)

    async def complete(self, messages: list[dict], sample: int = 0) -> Answer:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._call, messages)

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def make_provider(
    provider: dict, api_key: str, base_url: str | None = None
) -> OpenAIProvider | ZhipuProvider:
    """A provider client for `provider` (config's provider section); base_url overrides the config's."""
    return _client_of(provider, api_key, base_url, ZhipuProvider, OpenAIProvider)


def _client_of(provider: dict, api_key: str, base_url: str | None, zhipu: type, openai_compatible: type):
    """`zhipu` for kind zhipuai (its SDK has its own default endpoint), else `openai_compatible` at the
    given or the config's base_url, which it needs."""
    url = base_url or provider.get("base_url")
    if provider["kind"] == "zhipuai":
        return zhipu(provider, api_key, url)
    if not url:
        raise ProviderError(f"provider.base_url is required for kind '{provider['kind']}'")
    return openai_compatible(provider, api_key, url)


# ---------------------------------------------------------------------------------------------- batch APIs


class BatchLost(Exception):
    """The provider does not know the batch (404 on retrieve): its cells must be sent again."""


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the poller sees it: status, its output and error files, and its request counts."""

    id: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int


BATCH_ENDPOINT = "/v1/chat/completions"
BATCH_DONE = {"completed", "expired", "failed", "cancelled"}


def _batch_info(batch: Any) -> BatchInfo:
    counts = getattr(batch, "request_counts", None)
    return BatchInfo(
        batch.id,
        batch.status,
        getattr(batch, "output_file_id", None),
        getattr(batch, "error_file_id", None),
        int(getattr(counts, "total", 0) or 0),
        int(getattr(counts, "completed", 0) or 0),
        int(getattr(counts, "failed", 0) or 0),
    )


class _Batches:
    """The files + batches protocol of one SDK client (synchronous: the batch run polls, it does not race).

    `status_error`, `not_found` and `transport` are the SDK's exception classes."""

    client: Any
    status_error: type
    transport: tuple[type, ...]

    def body(self, messages: list[dict], sample: int) -> dict:
        """One line's request body: what the direct path sends for the same cell."""
        return {"model": self.model, "messages": messages, **self.params, **self.extra(sample)}

    def extra(self, sample: int) -> dict:
        return {}

    def _fail(self, what: str, e: Exception) -> ProviderError:
        if isinstance(e, self.status_error):
            snippet = " ".join(str(e.response.text).split())[:160]
            return ProviderError(f"batch API: {what} failed: HTTP {e.status_code}: {snippet}")
        return ProviderError(f"batch API: {what} failed: {type(e).__name__}: {e}")

    def upload(self, data: bytes, name: str) -> str:
        try:
            return self.client.files.create(file=(name, data, "application/jsonl"), purpose="batch").id
        except (self.status_error, *self.transport) as e:
            raise self._fail("uploading the batch file", e) from None

    def create(self, file_id: str, window: str) -> BatchInfo:
        try:
            batch = self.client.batches.create(
                input_file_id=file_id, endpoint=BATCH_ENDPOINT, completion_window=window
            )
        except (self.status_error, *self.transport) as e:
            raise self._fail("creating the batch", e) from None
        return _batch_info(batch)

    def retrieve(self, batch_id: str) -> BatchInfo | None:
        """The batch now; None when this poll failed in passing (a timeout, a 5xx); BatchLost on a 404."""
        try:
            return _batch_info(self.client.batches.retrieve(batch_id))
        except self.status_error as e:
            if e.status_code == 404:
                raise BatchLost(batch_id) from None
            if e.status_code in RETRYABLE_STATUS or e.status_code >= 500:
                return None
            raise self._fail(f"polling batch {batch_id}", e) from None
        except self.transport:
            return None

    def content(self, file_id: str) -> str:
        try:
            response = self.client.files.content(file_id)
        except (self.status_error, *self.transport) as e:
            raise self._fail(f"downloading file {file_id}", e) from None
        return response.content.decode("utf-8")

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            return _batch_info(self.client.batches.cancel(batch_id))
        except (self.status_error, *self.transport) as e:
            raise self._fail(f"cancelling batch {batch_id}", e) from None

    def close(self) -> None:
        self.client.close()


class OpenAIBatches(_Batches):
    """`openai` and `offline` kinds: the synchronous OpenAI client's files and batches."""

    def __init__(self, provider: dict, api_key: str, base_url: str):
        import openai

        self.model = provider["model"]
        self.params = sampling_params(provider)
        self.seeded = provider["kind"] == "offline"
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=provider["timeout_s"]
        )
        self.status_error = openai.APIStatusError
        self.transport = (openai.APIConnectionError, openai.APITimeoutError)

    def extra(self, sample: int) -> dict:
        return {"seed": sample} if self.seeded else {}  # as OpenAIProvider.complete sends it


class ZhipuBatches(_Batches):
    """`zhipuai` kind: the zhipuai SDK's client.files and client.batches."""

    def __init__(self, provider: dict, api_key: str, base_url: str | None):
        import httpx
        from zhipuai import ZhipuAI
        from zhipuai.core import _errors as zerr

        self.model = provider["model"]
        self.params = sampling_params(provider)
        self.client = ZhipuAI(
            api_key=api_key,
            base_url=base_url or ZHIPUAI_DEFAULT_BASE_URL,
            max_retries=0,
            timeout=provider["timeout_s"],
        )
        self.status_error = zerr.APIStatusError
        self.transport = (zerr.APIConnectionError, zerr.APITimeoutError, httpx.TransportError)


def make_batches(provider: dict, api_key: str, base_url: str | None = None) -> OpenAIBatches | ZhipuBatches:
    """The batch API client of `provider`; base_url overrides the config's."""
    return _client_of(provider, api_key, base_url, ZhipuBatches, OpenAIBatches)
