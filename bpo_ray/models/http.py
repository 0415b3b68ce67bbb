"""OpenAI-compatible HTTP backend (OpenAI, vLLM's server, the project's own Serve endpoint).

Chats go to /chat/completions; a raw-text request (`ChatRequest.prompt`) goes to the legacy
/completions, so the server tokenizes exactly that text and adds no chat template.

The `openai` async client does the HTTP; this module owns what a batch job needs around it:
bounded concurrency, the shared rate limit, retries with exponential backoff and jitter that
honour Retry-After, a per-request timeout, and per-row accounting (tokens, requests, retries).
The client's own retries are off so every attempt is counted and rate-limited here.

Three kinds of failure, three outcomes: a transient one (429, 5xx, timeouts) is retried and, if
it persists, a retryable rejected row; a problem of the request itself (400, 422) a permanent
rejected row; a problem of the whole job (401, 403, 404: bad key, no access, unknown model or
endpoint) raises ModelUnavailableError, which stops the job before it marks a row as failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bpo_ray.errors import ModelUnavailableError
from bpo_ray.models.base import ChatBackend, ChatRequest, ChatResult, TokenLogprob
from bpo_ray.models.ratelimit import RateLimiter
from bpo_ray.models.spec import ModelSpec

try:  # the openai client's own HTTP library (httpx2 in openai 3.x, httpx before)
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - older openai
    import httpx as _httpx

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# Statuses that say the job's settings are wrong, not the row: stop the job.
JOB_FATAL_STATUSES = {401: "the API key was rejected", 403: "the API key has no access",
                      404: "model or endpoint not found"}


class OpenAIHTTPBackend(ChatBackend):
    def __init__(self, spec: ModelSpec, *, rate_limiter: Any = None, client: Any = None,
                 api_key: str | None = None):
        self.spec = spec
        # Passed in by the job when the actor's environment lacks the variable (other nodes).
        self._api_key = api_key
        self.model_name = spec.model
        self.supports_prefill = spec.prefill
        self._client = client  # injected in tests; built lazily on the caller's event loop
        self._limiter = rate_limiter or RateLimiter(
            spec.rate_limit.requests_per_s, spec.rate_limit.tokens_per_min
        )
        self._slots: asyncio.Semaphore | None = None

    @property
    def rate_limiter(self) -> Any:
        """The limiter this backend books on: another backend of the same endpoint shares it."""
        return self._limiter

    def _get_client(self) -> Any:
        if self._client is None:
            # One connection per request in flight: the client's default pool keeps 100
            # keep-alive connections, which throttles a high concurrency and wastes a low one.
            limits = _httpx.Limits(max_connections=self.spec.concurrency,
                                   max_keepalive_connections=self.spec.concurrency)
            # The aiohttp transport (the `openai[aiohttp]` extra): the default httpx pool falls
            # behind at high concurrency, then bursts (a minimal paced client at 200 requests/s:
            # 82% of the limit and hundreds of 429s on httpx, 99% on aiohttp). Its connector
            # takes `max_connections` as its connection limit.
            self._client = openai.AsyncOpenAI(
                base_url=self.spec.base_url,
                api_key=self._api_key or self.spec.api_key(),
                max_retries=0,
                timeout=self.spec.timeout_s,
                http_client=openai.DefaultAioHttpClient(limits=limits, timeout=self.spec.timeout_s),
            )
        return self._client

    async def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.spec.concurrency)
        return list(await asyncio.gather(*(self.chat(r) for r in requests)))

    async def chat(self, request: ChatRequest) -> ChatResult:
        assert self._slots is not None, "call chat_batch"
        async with self._slots:
            return await self._chat_with_retries(request)

    async def _chat_with_retries(self, request: ChatRequest) -> ChatResult:
        text = request.prompt is not None  # a raw prompt goes to the completions API
        kwargs = self._text_kwargs(request) if text else self._request_kwargs(request)
        fill = _fill_text_result if text else _fill_result
        estimate = _estimate_tokens(request, kwargs["max_tokens"] * kwargs.get("n", 1))
        result = ChatResult()
        started = time.monotonic()
        for attempt in range(self.spec.max_retries + 1):
            if self._limiter.active:
                await self._limiter.acquire(estimate)
            result.requests += 1
            try:
                if request.on_text is not None and not text:
                    reply = await self._post_streamed(kwargs, request.on_text)
                else:
                    reply = await self._post(text, kwargs)
                fill(result, reply)
                if self._limiter.active:
                    self._limiter.settle(result.prompt_tokens + result.completion_tokens - estimate)
                result.error, result.retryable = None, False
                break
            except Exception as exc:  # classified below; anything unknown is final
                raise_if_job_fatal(exc, self.spec)
                retryable, retry_after = _classify(exc)
                result.error = _describe(exc)
                result.retryable = retryable
                # Text already streamed cannot be taken back: no second attempt after it.
                if not retryable or attempt == self.spec.max_retries or getattr(exc, "after_text", False):
                    break
                result.retries += 1
                await asyncio.sleep(_backoff(attempt, retry_after))
        result.latency_s = time.monotonic() - started
        return result

    async def _post(self, text: bool, kwargs: dict[str, Any]) -> Any:
        """`completions.create(**kwargs)` (or the chat one) without its argument transform, which
        took a quarter of the client's CPU to rewrite plain JSON as itself (measured: 2.8 ms of
        CPU per request with it, 2.0 without); the reply is parsed and errors are raised alike."""
        body = dict(kwargs)
        timeout = body.pop("timeout")
        body.update(body.pop("extra_body", {}))
        path, reply_type = ("/completions", Completion) if text else ("/chat/completions", ChatCompletion)
        return await self._get_client().post(path, cast_to=reply_type, body=body, options={"timeout": timeout})

    async def _post_streamed(self, kwargs: dict[str, Any], on_text: Callable[[int, str], None]) -> ChatCompletion:
        """A chat completion asked for with stream=true: each piece of text goes to `on_text`
        as it arrives, and the chunks are put together into the reply `_post` would return.
        An error after some text is marked `after_text` (not to be retried)."""
        body = dict(kwargs)
        timeout = body.pop("timeout")
        body.update(body.pop("extra_body", {}))
        body.update(stream=True, stream_options={"include_usage": True})
        stream = await self._get_client().post("/chat/completions", cast_to=ChatCompletion, body=body,
                                               options={"timeout": timeout}, stream=True,
                                               stream_cls=openai.AsyncStream[ChatCompletionChunk])
        texts: dict[int, list[str]] = {}
        finish: dict[int, str] = {}
        usage, extra = None, {}
        try:
            async for chunk in stream:
                extra.update({k: v for k, v in (chunk.model_extra or {}).items() if k != "error"})
                if error := (chunk.model_extra or {}).get("error"):
                    raise _MalformedReply(f"the stream ended with an error: {_short(str(error))}")
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    piece = choice.delta.content or ""
                    if piece:
                        texts.setdefault(choice.index, []).append(piece)
                        on_text(choice.index, piece)
                    finish[choice.index] = choice.finish_reason or finish.get(choice.index, "")
        except Exception as exc:
            exc.after_text = bool(texts)  # type: ignore[attr-defined]
            raise
        return ChatCompletion.model_validate({
            "id": "", "object": "chat.completion", "created": 0, "model": kwargs["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": "".join(texts.get(i, []))},
                         "finish_reason": finish.get(i) or "stop"} for i in sorted(set(texts) | set(finish))],
            "usage": usage.model_dump() if usage else None, **extra})

    def _request_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """Arguments of a chat completion."""
        messages = list(request.messages)
        extra_body: dict[str, Any] = {}
        if request.prefill and self.supports_prefill:
            # vLLM's (and our server's) way to continue a pre-filled assistant turn.
            messages.append({"role": "assistant", "content": request.prefill})
            extra_body = {"continue_final_message": True, "add_generation_prompt": False}
        kwargs = {**self._sampling_kwargs(request), "messages": messages}
        if request.logprobs:
            kwargs["logprobs"] = True
            if request.top_logprobs:
                kwargs["top_logprobs"] = request.top_logprobs
        if extra_body:
            kwargs["extra_body"] = extra_body
        return kwargs

    def _text_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """Arguments of a text completion of the raw `request.prompt`."""
        kwargs = {**self._sampling_kwargs(request), "prompt": request.prompt}
        if request.logprobs:  # the legacy API's logprobs: how many alternatives per token
            kwargs["logprobs"] = request.top_logprobs or 0
        if not request.add_special_tokens:
            kwargs["extra_body"] = {"add_special_tokens": False}  # vLLM's extension
        return kwargs

    def _sampling_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """The arguments both APIs share: model, sampling and timeout."""
        sampling = {**self.spec.sampling.model_dump(), **request.sampling}
        kwargs: dict[str, Any] = {
            "model": self.spec.model,
            "temperature": sampling["temperature"],
            "top_p": sampling["top_p"],
            "max_tokens": sampling["max_tokens"],
            "timeout": self.spec.timeout_s,
        }
        if sampling["n"] != 1:
            kwargs["n"] = sampling["n"]
        if sampling.get("stop"):
            kwargs["stop"] = sampling["stop"]
        if sampling.get("seed") is not None:
            kwargs["seed"] = sampling["seed"]
        return kwargs

    async def probe(self, attempts: int = 3) -> None:
        """Check the endpoint, the key and the model once, before a job fans out.

        Lists the models (free, no tokens); a model missing from the list gets one 1-token
        request, since some proxies list fewer models than they serve. Raises
        ModelUnavailableError naming the setting to fix.
        """
        client = self._get_client()
        for attempt in range(attempts):
            try:
                listed = [m.id async for m in client.models.list()]
                break
            except Exception as exc:
                if isinstance(exc, openai.NotFoundError):
                    listed = None  # the endpoint does not list models: ask the model directly
                    break
                raise_if_job_fatal(exc, self.spec)
                retryable, retry_after = _classify(exc)
                if not retryable or attempt == attempts - 1:
                    raise ModelUnavailableError(
                        f"model.base_url: {self.spec.base_url} does not answer ({_describe(exc)}); "
                        "check the URL and that the server is up") from None
                await asyncio.sleep(min(2.0, _backoff(attempt, retry_after)))
        if listed is not None and self.spec.model in listed:
            return
        request = ChatRequest([{"role": "user", "content": "ping"}], sampling={"max_tokens": 1})
        try:
            await self._get_client().chat.completions.create(**self._request_kwargs(request))
        except Exception as exc:
            raise_if_job_fatal(exc, self.spec)
            # Anything else (a 400 for the tiny request, a busy server) proves the model exists.

    async def aclose(self) -> None:
        if self._client is not None and hasattr(self._client, "close"):
            await self._client.close()


def raise_if_job_fatal(exc: Exception, spec: ModelSpec) -> None:
    """401/403/404 concern every row alike: raise ModelUnavailableError naming the setting."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in JOB_FATAL_STATUSES:
        return
    status = exc.status_code
    setting = (f"model.api_key_env ({spec.api_key_env})" if status in (401, 403)
               else f"model.model ({spec.model!r}) or model.base_url")
    raise ModelUnavailableError(
        f"{spec.base_url or 'the API'} answered HTTP {status}: {JOB_FATAL_STATUSES[status]} "
        f"({_short(exc.message, 160)}); check {setting}") from None


def _fill_result(result: ChatResult, reply: Any) -> None:
    """Read a `chat.completion` reply into `result`."""
    _fill_choices(result, reply, lambda c: c.message.content, _logprobs_of)


def _fill_text_result(result: ChatResult, reply: Any) -> None:
    """Read a `text_completion` reply into `result`."""
    _fill_choices(result, reply, lambda c: c.text, _text_logprobs_of)


def _fill_choices(result: ChatResult, reply: Any, text_of: Callable[[Any], str | None],
                  logprobs_of: Callable[[Any], list[TokenLogprob]]) -> None:
    if not getattr(reply, "choices", None):
        raise _MalformedReply("reply has no choices")
    result.texts = [(text_of(c) or "") for c in reply.choices]
    result.extra = dict(getattr(reply, "model_extra", None) or {})
    result.finish_reasons = [c.finish_reason or "stop" for c in reply.choices]
    usage = getattr(reply, "usage", None)
    result.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
    result.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
    if any(getattr(c, "logprobs", None) for c in reply.choices):
        result.logprobs = [logprobs_of(c) for c in reply.choices]


def _logprobs_of(choice: Any) -> list[TokenLogprob]:
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    return [
        TokenLogprob(t.token, t.logprob, [(a.token, a.logprob) for a in (t.top_logprobs or [])])
        for t in content
    ]


def _text_logprobs_of(choice: Any) -> list[TokenLogprob]:
    """The legacy completions shape: parallel lists of tokens, their logprobs and, per token,
    a dict of the top alternatives."""
    logprobs = getattr(choice, "logprobs", None)
    tokens = getattr(logprobs, "tokens", None) or []
    values = getattr(logprobs, "token_logprobs", None) or []
    tops = getattr(logprobs, "top_logprobs", None) or [None] * len(tokens)
    return [TokenLogprob(token, value, list((top or {}).items()))
            for token, value, top in zip(tokens, values, tops)]


class _MalformedReply(Exception):
    pass


def _classify(exc: Exception) -> tuple[bool, float | None]:
    """(retryable, server-requested delay). Only transient failures are retried."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in (408, 409, 429) or status >= 500
        return retryable, _retry_after(exc.response) if retryable else None
    if isinstance(exc, (openai.APIConnectionError, asyncio.TimeoutError)):
        return True, None  # includes APITimeoutError
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, _MalformedReply)):
        return True, None  # a garbled body is usually a proxy hiccup
    return False, None


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    if value := headers.get("retry-after-ms"):
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    if value := headers.get("retry-after"):
        try:
            return float(value)
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        # The server knows best; a little jitter keeps many actors from waking together.
        return min(BACKOFF_CAP_S, retry_after) * random.uniform(1.0, 1.2)
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.5)


def _describe(exc: Exception) -> str:
    # Status and message only: request headers (the key) never reach a row or a log.
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_short(exc.message)}"
    if isinstance(exc, openai.APITimeoutError):
        # The aiohttp transport reports a refused connection as a connect timeout.
        refused = _cause(exc, OSError)
        return f"connection error: {_short(str(refused))}" \
            if refused is not None and not isinstance(refused, TimeoutError) else "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {_short(str(exc.__cause__ or exc))}"
    return f"{type(exc).__name__}: {_short(str(exc))}"


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` down `exc`'s chain of causes."""
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _estimate_tokens(request: ChatRequest, completion_budget: int) -> int:
    if request.prompt is not None:
        chars = len(request.prompt)
    else:
        chars = sum(len(m.get("content") or "") for m in request.messages) + len(request.prefill or "")
    return chars // 4 + completion_budget
