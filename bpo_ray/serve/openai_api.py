"""The OpenAI chat-completions and (legacy) completions protocols, kept free of Ray so any
serving graph can reuse them.

Requests become `ChatRequest`s (a completions prompt as a raw-text one), `ChatResult`s become
`chat.completion` or `text_completion` JSON, and every error leaves the server in OpenAI's
shape (`{"error": {message, type, param, code}}`) so that OpenAI clients raise their usual
typed exceptions.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from bpo_ray.models.base import ChatRequest, ChatResult, Message, TokenLogprob

OWNER = "bpo-ray"


class OpenAIError(Exception):
    """An error to send back as OpenAI error JSON with the given HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, type=self.type, param=self.param, code=self.code)


def error_response(status: int, message: str, *, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # "developer" is OpenAI's newer name for "system"; tools are not supported.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def to_message(self) -> Message:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class _GenerationRequest(BaseModel):
    """The fields both endpoints share; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    n: int | None = Field(None, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        stops = [s for s in stops or [] if s]
        return stops or None

    def requested_max_tokens(self) -> int | None:
        """The completion length the client asked for; None: the server's default."""
        return self.max_tokens

    def sampling(self) -> dict[str, Any]:
        """Only the fields the client set: the rest fall back to the server's ModelSpec.sampling."""
        out: dict[str, Any] = {}
        for key in ("temperature", "top_p", "n", "stop", "seed"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        max_tokens = self.requested_max_tokens()
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        return out


class ChatCompletionRequest(_GenerationRequest):
    """The fields of POST /v1/chat/completions this server honours; unknown ones are ignored."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: dict[str, Any] | None = None
    """OpenAI's `{"include_usage": true}`: a last chunk with the usage."""
    # vLLM extensions: continue a pre-filled assistant turn instead of opening a new one.
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_GenerationRequest):
    """The fields of POST /v1/completions (OpenAI's legacy text completions) this server
    honours; unknown ones are ignored."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=32768)  # OpenAI's default for this endpoint
    logprobs: int | None = Field(None, ge=0, le=5)
    """How many alternatives per token; set at all (0 included), it asks for the chosen tokens' logprobs."""
    echo: bool = False
    suffix: str | None = None
    # vLLM extension: False for a prompt that already carries its special tokens.
    add_special_tokens: bool = True


def _refuse_stream(req: _GenerationRequest) -> None:
    if req.stream:
        raise OpenAIError(400, "stream=true is not supported by this server", param="stream")


def to_chat_request(req: ChatCompletionRequest, *, streams: bool = False) -> ChatRequest:
    """Map an API request onto the backend's ChatRequest; raise OpenAIError(400) when it can't
    (`streams`: the server answers stream=true, see `to_chunk_events`)."""
    if not streams:
        _refuse_stream(req)
    elif req.stream and req.logprobs:
        raise OpenAIError(400, "logprobs are not streamed by this server; ask with stream=false", param="logprobs")
    if req.top_logprobs and not req.logprobs:
        raise OpenAIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    messages = [m.to_message() for m in req.messages]
    prefill: str | None = None
    if req.continue_final_message:
        if messages[-1]["role"] != "assistant":
            raise OpenAIError(400, "continue_final_message needs the last message to have role "
                              "'assistant'", param="messages")
        prefill = messages.pop()["content"]
        if not messages:
            raise OpenAIError(400, "continue_final_message needs a message before the assistant turn",
                              param="messages")
    elif not req.add_generation_prompt:
        # ChatRequest always opens a new assistant turn; a bare prompt has no equivalent.
        raise OpenAIError(400, "add_generation_prompt=false is only supported together with "
                          "continue_final_message=true", param="add_generation_prompt")
    return ChatRequest(messages=messages, prefill=prefill, sampling=req.sampling(),
                       logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0)


def to_text_request(req: CompletionRequest) -> ChatRequest:
    """Map a completions request onto a raw-text ChatRequest; raise OpenAIError(400) when it can't."""
    _refuse_stream(req)
    if req.echo:
        raise OpenAIError(400, "echo=true is not supported by this server", param="echo")
    if req.suffix is not None:
        raise OpenAIError(400, "suffix is not supported by this server", param="suffix")
    prompt = req.prompt
    if isinstance(prompt, list):
        # Batching is the server's job: concurrent requests share a generate call anyway.
        if len(prompt) != 1:
            raise OpenAIError(400, "this server takes one prompt per request", param="prompt")
        prompt = prompt[0]
    return ChatRequest(messages=[], prompt=prompt, add_special_tokens=req.add_special_tokens,
                       sampling=req.sampling(), logprobs=req.logprobs is not None,
                       top_logprobs=req.logprobs or 0)


def _token_json(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _logprobs_json(tokens: list[TokenLogprob]) -> dict[str, Any]:
    content = []
    for t in tokens:
        entry = _token_json(t.token, t.logprob)
        entry["top_logprobs"] = [_token_json(tok, lp) for tok, lp in t.top]
        content.append(entry)
    return {"content": content, "refusal": None}


def new_request_id() -> str:
    return uuid.uuid4().hex


def _text_logprobs_json(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """The legacy completions shape: parallel lists (alternatives as {token: logprob}, and each
    token's character offset in the text)."""
    offsets = list(itertools.accumulate((len(t.token) for t in tokens), initial=0))[:-1]
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [_top_dict(t.top) for t in tokens], "text_offset": offsets}


def _top_dict(top: list[tuple[str, float]]) -> dict[str, float]:
    """Alternatives, best first, as a dict: a text seen twice (byte pieces of characters that
    decode alike) keeps its best logprob."""
    out: dict[str, float] = {}
    for token, logprob in top:
        out.setdefault(token, logprob)
    return out


def to_completion_json(result: ChatResult, *, model: str, request_id: str) -> dict[str, Any]:
    """A `chat.completion` object. A failed result raises OpenAIError: 400 when retrying cannot
    help (prompt too long, bad sampling values; what OpenAI answers too), else 500."""
    raise_if_failed(result)
    choices = [{
        "index": i,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "finish_reason": finish,
        "logprobs": None if tokens is None else _logprobs_json(tokens),
    } for i, text, finish, tokens in _choices(result)]
    return _response_json(result, f"chatcmpl-{request_id}", "chat.completion", model, choices)


def to_text_completion_json(result: ChatResult, *, model: str, request_id: str) -> dict[str, Any]:
    """A `text_completion` object (the legacy completions API); errors as in to_completion_json."""
    raise_if_failed(result)
    choices = [{
        "index": i,
        "text": text,
        "finish_reason": finish,
        "logprobs": None if tokens is None else _text_logprobs_json(tokens),
    } for i, text, finish, tokens in _choices(result)]
    return _response_json(result, f"cmpl-{request_id}", "text_completion", model, choices)


def raise_if_failed(result: ChatResult) -> None:
    """OpenAIError for a failed result: 400 when retrying cannot help (prompt too long, bad
    sampling values; what OpenAI answers too), else 500."""
    if result.error is None:
        return
    if not result.retryable:
        raise OpenAIError(400, result.error, type="invalid_request_error")
    raise OpenAIError(500, result.error, type="server_error")


def _choices(result: ChatResult) -> Iterator[tuple[int, str, str, list[TokenLogprob] | None]]:
    """(index, text, finish_reason, logprobs or None) for each choice of a result."""
    for i, text in enumerate(result.texts):
        finish = result.finish_reasons[i] if i < len(result.finish_reasons) else "stop"
        tokens = result.logprobs[i] if result.logprobs is not None and i < len(result.logprobs) else None
        yield i, text, finish, tokens


def _response_json(result: ChatResult, response_id: str, kind: str, model: str,
                   choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def model_json(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": OWNER}


def models_json(*model_ids: str) -> dict[str, Any]:
    """GET /v1/models: the models this server holds."""
    return {"object": "list", "data": [model_json(m) for m in model_ids]}


def check_model(requested: str, *served: str) -> None:
    if requested not in served:
        raise OpenAIError(404, f"The model `{requested}` does not exist (this server serves "
                          f"{', '.join(f'`{m}`' for m in served)})", param="model", code="model_not_found")


async def to_chunk_events(pieces: AsyncIterator[tuple[int, str] | ChatResult], *, model: str, request_id: str,
                          include_usage: bool = False, extra: dict[str, Any] | None = None) -> AsyncIterator[str]:
    """A reply as `chat.completion.chunk` server-sent events, as OpenAI streams them.

    `pieces` yields (choice index, new text) as the model writes, then the finished ChatResult
    (bpo_ray/serve/streaming.py); the result's text beyond what was streamed follows at the end,
    so a backend that cannot stream is sent in one piece. Each choice opens with a role chunk
    (the first one carries `extra`) and closes with its finish_reason; then a usage chunk when
    asked for (`stream_options.include_usage`), then `data: [DONE]`. A failure after the first
    chunk is an `error` event: the status line has gone already.
    """
    base = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    opened: set[int] = set()
    sent: dict[int, int] = {}

    def event(choices: list[dict[str, Any]], **more: Any) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **more}, ensure_ascii=False)}\n\n"

    def text_events(i: int, text: str) -> Iterator[str]:
        if i not in opened:
            opened.add(i)
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                        **((extra or {}) if len(opened) == 1 else {}))
        if text:
            sent[i] = sent.get(i, 0) + len(text)
            yield event([{"index": i, "delta": {"content": text}, "finish_reason": None}])

    result: ChatResult | None = None
    async for piece in pieces:
        if isinstance(piece, ChatResult):
            result = piece
            break
        for line in text_events(*piece):
            yield line
    if result is None or result.error is not None:
        error = result.error if result is not None else "the reply ended without a result"
        yield f"data: {json.dumps({'error': {'message': error, 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    for i, text, finish, _ in _choices(result):
        for line in text_events(i, text[sent.get(i, 0):]):
            yield line
        yield event([{"index": i, "delta": {}, "finish_reason": finish}])
    if include_usage:
        yield event([], usage=_response_json(result, "", "", model, [])["usage"])
    yield "data: [DONE]\n\n"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # Drop pydantic's union-branch names ("str", "list[...]") from the parameter path.
    param = ".".join(p for p in loc if not p.startswith(("str", "list[", "function-")))
    msg = first.get("msg", "invalid request")
    return (f"{param}: {msg}" if param else msg), (param or None)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response OpenAI-shaped (call before the app is frozen by serve.ingress)."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type=kind)
