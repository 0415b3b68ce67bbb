"""A real, scriptable OpenAI-compatible HTTP server for tests and benchmarks.

It runs aiohttp in a background thread with its own event loop, so synchronous
tests and benchmarks can point any HTTP client at ``base_url``. Behaviour is
controlled per request by a FIFO script of :class:`Fault` entries, plus a fixed
latency and an optional sliding-window rate limit.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Fault", "ScriptedOpenAIServer", "ServerStats"]

_MAX_BODIES = 1000
# Stalled handlers would otherwise hold stop() for aiohttp's default 60 s.
_SHUTDOWN_TIMEOUT_S = 0.5
# Default listen backlog (128) is too small for benchmark bursts.
_BACKLOG = 2048


@dataclass
class Fault:
    """What to do with one request instead of (or on top of) the normal reply."""

    status: int | None = None  # reply with OpenAI error JSON and this status
    retry_after: float | None = None  # Retry-After header (seconds) on the error reply
    stall_s: float | None = None  # sleep this long before answering
    malformed: bool = False  # 200 with a body that is not valid JSON
    content: str | None = None  # 200 with this assistant content (or text) instead of reply_fn's


@dataclass
class ServerStats:
    """Thread-safe counters for completion requests, chat and text (``/v1/models`` is not counted)."""

    requests: int = 0
    unauthorized: int = 0  # requests answered 401 for a missing or wrong key (any route)
    peers: set = field(default_factory=set)  # client (host, port) pairs: one per TCP connection
    by_status: dict[int, int] = field(default_factory=dict)
    ok_timestamps: list[float] = field(default_factory=list)  # time.monotonic() per 200 reply
    bodies: list[dict] = field(default_factory=list)  # last _MAX_BODIES parsed request bodies
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_request(self, body: dict | None, peer: Any = None) -> None:
        with self.lock:
            self.requests += 1
            if peer is not None:
                self.peers.add(tuple(peer))
            if body is not None:
                self.bodies.append(body)
                if len(self.bodies) > _MAX_BODIES:
                    del self.bodies[0]

    def record_unauthorized(self) -> None:
        with self.lock:
            self.unauthorized += 1

    def record_reply(self, status: int) -> None:
        with self.lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if status == 200:
                self.ok_timestamps.append(time.monotonic())

    def in_flight(self) -> int:
        """Completion requests received and not answered yet (paid for, on a real API)."""
        with self.lock:
            return self.requests - sum(self.by_status.values())

    def ok_rate(self) -> float:
        """200 replies per second between the first and the last 200 reply (0 if fewer than 2)."""
        with self.lock:
            ts = list(self.ok_timestamps)
        if len(ts) < 2 or ts[-1] <= ts[0]:
            return 0.0
        return (len(ts) - 1) / (ts[-1] - ts[0])


class _SlidingWindowLimiter:
    """At most ``capacity`` admitted arrivals in any ``window_s`` window.

    Only touched from the server's event loop thread, so it needs no lock.
    """

    def __init__(self, rps: float) -> None:
        if rps <= 0:
            raise ValueError(f"rate_limit_rps must be > 0, got {rps}")
        # floor(rps) per 1 s; below 1 rps, one request per 1/rps seconds instead of none.
        self.capacity = max(1, math.floor(rps))
        self.window_s = 1.0 if rps >= 1 else 1.0 / rps
        self._admitted: collections.deque[float] = collections.deque()

    def try_admit(self, now: float) -> float | None:
        """Admit and return None, or return seconds until a slot frees."""
        while self._admitted and self._admitted[0] <= now - self.window_s:
            self._admitted.popleft()
        if len(self._admitted) < self.capacity:
            self._admitted.append(now)
            return None
        return self._admitted[0] + self.window_s - now


def _fmt_seconds(s: float) -> str:
    # "0.137", "2" -- plain decimal, which every client's float() parses.
    return f"{s:.3f}".rstrip("0").rstrip(".") or "0"


def _words(text: Any) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return sum(_words(p.get("text")) for p in text if isinstance(p, dict))
    return 0


def _user_text(body: dict) -> str:
    """The last user message of a chat, or the prompt of a text completion."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict)
                )
            return "" if content is None else str(content)
    return ""


def _error_response(
    status: int, message: str, err_type: str, *, retry_after: float | None = None
) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": _fmt_seconds(retry_after)}
    payload = {"error": {"message": message, "type": err_type, "code": err_type}}
    return web.json_response(payload, status=status, headers=headers)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}


class ScriptedOpenAIServer:
    """OpenAI-compatible ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``
    (text) with scripted faults; ``reply_fn`` gets either request's body and returns the reply
    text, or a list of texts, one per choice (``n``), to script sampled candidates.

    Per completion request: bad JSON -> 400 (script untouched); otherwise pop the next
    Fault (FIFO). A Fault with ``status`` answers with that error after
    ``stall_s`` (no latency, no rate limiting). Everything else is rate limited
    on arrival, then sleeps ``latency_s`` (+ ``stall_s``) and answers 200.
    """

    def __init__(
        self,
        *,
        reply_fn: Callable[[dict], str | list[str]] | None = None,
        logprobs_fn: Callable[[dict], list[dict]] | None = None,
        latency_s: float = 0.0,
        rate_limit_rps: float | None = None,
        script: Iterable[Fault] | None = None,
        model: str = "scripted",
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
    ) -> None:
        self.reply_fn = reply_fn
        # Chat logprobs for requests that ask for them: body -> OpenAI's `logprobs.content` list.
        self.logprobs_fn = logprobs_fn
        self.api_key = api_key  # when set, every route answers 401 without "Bearer <api_key>"
        self.latency_s = latency_s
        self.model = model
        self.host = host
        self.port = port
        self.stats = ServerStats()
        self._limiter = (
            _SlidingWindowLimiter(rate_limit_rps) if rate_limit_rps is not None else None
        )
        self._script: collections.deque[Fault] = collections.deque(script or ())
        self._script_lock = threading.Lock()
        self._created = int(time.time())
        self._ids = itertools.count()

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self._ready.is_set() or self._start_error is not None:
            raise RuntimeError("server is not running; call start() first")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ScriptedOpenAIServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._start_error = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="scripted-openai-server", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            self._ready.clear()
            raise self._start_error
        return self

    def stop(self) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:  # loop already closed between the check and the call
                pass
        thread.join()
        self._thread = self._loop = self._stop_event = None
        self._ready.clear()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_post("/v1/completions", self._handle_text)
        # access_log=None: per-request logging costs real CPU at benchmark rates.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, backlog=_BACKLOG)
            await site.start()
            self.port = runner.addresses[0][1]  # the real port when port=0
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()

    # ---- script ----------------------------------------------------------

    def push(self, *faults: Fault) -> None:
        """Append faults to the script; each later request consumes one."""
        with self._script_lock:
            self._script.extend(faults)

    def _next_fault(self) -> Fault | None:
        with self._script_lock:
            return self._script.popleft() if self._script else None

    def ok_rate(self) -> float:
        return self.stats.ok_rate()

    # ---- handlers --------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        self.stats.record_unauthorized()
        return _error_response(401, "Incorrect API key provided.", "authentication_error")

    async def _handle_models(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self._created,
                        "owned_by": "bpo-ray-test",
                    }
                ],
            }
        )

    async def _handle_chat(self, request: web.Request) -> web.Response:
        return await self._handle(request, self._completion)

    async def _handle_text(self, request: web.Request) -> web.Response:
        return await self._handle(request, self._text_completion)

    async def _handle(
        self, request: web.Request, render: Callable[[dict, str], dict]
    ) -> web.Response:
        """The shared path of both completion routes; ``render`` builds the 200 reply body."""
        arrival = time.monotonic()
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.stats.record_request(None)
            return self._reply(
                _error_response(400, f"invalid JSON body: {exc}", "invalid_request_error")
            )
        self.stats.record_request(body, request.transport.get_extra_info("peername") if request.transport else None)

        fault = self._next_fault() or Fault()
        if fault.status is not None:
            if fault.stall_s:
                await asyncio.sleep(fault.stall_s)
            default_type = "server_error" if fault.status >= 500 else "invalid_request_error"
            err_type = _ERROR_TYPES.get(fault.status, default_type)
            return self._reply(
                _error_response(
                    fault.status,
                    f"scripted fault: HTTP {fault.status}",
                    err_type,
                    retry_after=fault.retry_after,
                )
            )

        if self._limiter is not None:
            wait_s = self._limiter.try_admit(arrival)
            if wait_s is not None:
                return self._reply(
                    _error_response(
                        429,
                        "Rate limit exceeded, retry later.",
                        "rate_limit_exceeded",
                        retry_after=max(wait_s, 0.001),
                    )
                )

        delay = self.latency_s + (fault.stall_s or 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

        if fault.malformed:
            truncated = '{"id": "chatcmpl-broken", "choices": ['
            return self._reply(
                web.Response(status=200, text=truncated, content_type="application/json")
            )
        try:
            content = self._content(body, fault)
        except Exception as exc:  # a buggy reply_fn should surface as a 500, not a dropped socket
            return self._reply(_error_response(500, f"reply_fn failed: {exc!r}", "server_error"))
        reply = render(body, content)
        if body.get("stream") and reply["object"] == "chat.completion":
            return await self._stream(request, body, reply)
        return self._reply(web.json_response(reply))

    async def _stream(self, request: web.Request, body: dict, reply: dict) -> web.StreamResponse:
        """A chat reply as OpenAI streams it: per choice a role chunk, its text word by word and a
        finish chunk, a usage chunk when `stream_options.include_usage`, then [DONE]."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
                "model": reply["model"]}

        async def send(choices: list[dict], **more: Any) -> None:
            await response.write(f"data: {json.dumps({**base, 'choices': choices, **more})}\n\n".encode())

        for choice in reply["choices"]:
            i = choice["index"]
            await send([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            for word in re.findall(r"\s*\S+|\s+$", choice["message"]["content"]):
                await send([{"index": i, "delta": {"content": word}, "finish_reason": None}])
            await send([{"index": i, "delta": {}, "finish_reason": choice["finish_reason"]}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=reply["usage"])
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.stats.record_reply(200)
        return response

    def _reply(self, response: web.Response) -> web.Response:
        self.stats.record_reply(response.status)
        return response

    def _content(self, body: dict, fault: Fault) -> str | list[str]:
        if fault.content is not None:
            return fault.content
        if self.reply_fn is not None:
            return self.reply_fn(body)
        return f"Optimized Instruction: {_user_text(body)}"

    def _completion(self, body: dict, content: str | list[str]) -> dict:
        prompt_tokens = sum(
            _words(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)
        )
        def choice(text: str) -> dict:
            out: dict = {"message": {"role": "assistant", "content": text}}
            if body.get("logprobs") and self.logprobs_fn is not None:
                out["logprobs"] = {"content": self.logprobs_fn(body)}
            return out

        return self._envelope(body, "chatcmpl", "chat.completion", choice, prompt_tokens, content)

    def _text_completion(self, body: dict, content: str | list[str]) -> dict:
        prompt_tokens = _words(body.get("prompt"))
        return self._envelope(body, "cmpl", "text_completion", lambda text: {"text": text}, prompt_tokens, content)

    def _envelope(
        self, body: dict, id_prefix: str, kind: str, choice: Callable[[str], dict], prompt_tokens: int,
        content: str | list[str],
    ) -> dict:
        """The reply body: ``n`` choices (the same text, or one per scripted text) plus id, model
        and word-count usage."""
        n = body.get("n") or 1
        n = n if isinstance(n, int) and n > 0 else 1
        texts = [content[i % len(content)] for i in range(n)] if isinstance(content, list) else [content] * n
        completion_tokens = sum(_words(text) for text in texts)
        return {
            "id": f"{id_prefix}-{next(self._ids)}-{uuid.uuid4().hex[:12]}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [
                {"index": i, "finish_reason": "stop", "logprobs": None, **choice(text)}
                for i, text in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
