"""The OpenAI chat-completions protocol, kept free of Ray so any serving graph can reuse it.

Requests become `ChatRequest`s, `ChatResult`s become `chat.completion` JSON, and every error
leaves the server in OpenAI's shape (`{"error": {message, type, param, code}}`) so that
OpenAI clients raise their usual typed exceptions.
"""

from __future__ import annotations

import time
import uuid
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


class ChatCompletionRequest(BaseModel):
    """The fields of POST /v1/chat/completions this server honours; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    n: int | None = Field(None, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    # vLLM extensions: continue a pre-filled assistant turn instead of opening a new one.
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        stops = [s for s in stops or [] if s]
        return stops or None

    def sampling(self) -> dict[str, Any]:
        """Only the fields the client set: the rest fall back to the server's ModelSpec.sampling."""
        out: dict[str, Any] = {}
        for key in ("temperature", "top_p", "n", "stop", "seed"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        return out


def to_chat_request(req: ChatCompletionRequest) -> ChatRequest:
    """Map an API request onto the backend's ChatRequest; raise OpenAIError(400) when it can't."""
    if req.stream:
        raise OpenAIError(400, "stream=true is not supported by this server", param="stream")
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


def to_completion_json(result: ChatResult, *, model: str, request_id: str) -> dict[str, Any]:
    """A `chat.completion` object. A failed result raises OpenAIError: 400 when retrying cannot
    help (prompt too long, bad sampling values; what OpenAI answers too), else 500."""
    if result.error is not None:
        if not result.retryable:
            raise OpenAIError(400, result.error, type="invalid_request_error")
        raise OpenAIError(500, result.error, type="server_error")
    choices = []
    for i, text in enumerate(result.texts):
        finish = result.finish_reasons[i] if i < len(result.finish_reasons) else "stop"
        logprobs = None
        if result.logprobs is not None and i < len(result.logprobs):
            logprobs = _logprobs_json(result.logprobs[i])
        choices.append({
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "finish_reason": finish,
            "logprobs": logprobs,
        })
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
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


def models_json(model_id: str) -> dict[str, Any]:
    """GET /v1/models: the one model this server holds."""
    return {"object": "list", "data": [model_json(model_id)]}


def check_model(requested: str, served: str) -> None:
    if requested != served:
        raise OpenAIError(404, f"The model `{requested}` does not exist (this server serves "
                          f"`{served}`)", param="model", code="model_not_found")


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
