"""The BPO serving graph on Ray Serve: an Optimizer deployment, one deployment per target
model and an OpenAI-compatible Ingress that composes them with DeploymentHandles.

Routes: GET /v1/models (every target as X and bpo/X), POST /v1/chat/completions (bpo/X: the
last user message is optimized first; X: straight to X), POST /v1/optimize (the optimized
prompt alone), GET /healthz. The Optimizer runs the optimize stage itself (template, sampling
mode, guards) on requests gathered by `serve.batch`; targets are `ModelReplica`s
(bpo_ray/serve/model_server.py), which batch the same way or proxy an upstream API.

`build_app(config)` makes the application for `bpo-ray serve`; `app(args)` is the builder
`serve run` and `serve deploy` import (configs/serve-*.yaml).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

import os
import time
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from ray import serve
from ray.serve import Application

from bpo_ray.data.rows import STATUS_OK
from bpo_ray.models import ChatRequest, ChatResult, ModelSpec
from bpo_ray.serve.config import BPO_PREFIX, ServeConfig
from bpo_ray.serve.model_server import ModelReplica
from bpo_ray.serve.openai_api import (
    ChatCompletionRequest,
    OpenAIError,
    install_error_handlers,
    models_json,
    new_request_id,
    raise_if_failed,
    to_chat_request,
    to_chunk_events,
    to_completion_json,
)
from bpo_ray.serve.streaming import started

OPTIMIZED_PROMPT_HEADER = "x-bpo-optimized-prompt"
"""The optimized prompt of a bpo/X answer, percent-encoded (headers carry Latin-1 only)."""


@serve.deployment
class Optimizer:
    """The prompt optimizer: the optimize stage on one backend per replica, requests batched."""

    def __init__(self, spec: dict[str, Any], stage_kwargs: dict[str, Any]) -> None:
        from bpo_ray.optimize.stage import OptimizeStage

        model = ModelSpec.model_validate(spec)
        key = SecretStr(model.api_key()) if model.is_http else None  # from the replica's environment
        self.stage = OptimizeStage(spec, **stage_kwargs, api_key=key)
        self.name = model.model  # said in each answer's `bpo` object: which optimizer wrote it
        self._rewrite.set_max_batch_size(model.batch_size)
        self.stage.backend  # load the model now: a replica is healthy once it can answer

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def _rewrite(self, asks: list[tuple[str, str]]) -> list[dict[str, Any]]:
        rows = [{"id": str(i), "prompt": prompt, "context": context} for i, (prompt, context) in enumerate(asks)]
        return await self.stage.process_rows(rows)

    async def optimize(self, prompt: str, context: str = "") -> dict[str, Any]:
        """{optimized_prompt, unchanged, reason, optimizer, usage}. A rewrite the guards reject,
        or a failed call, leaves the prompt as it is (unchanged, with the reason): a user's
        request never fails because its rewrite did."""
        row = await self._rewrite((prompt, context))
        usage = {"prompt_tokens": row.get("optimize_prompt_tokens", 0),
                 "completion_tokens": row.get("optimize_completion_tokens", 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        out = {"optimizer": self.name, "usage": usage}
        if row.get("status", STATUS_OK) != STATUS_OK:  # process_rows marks rejected rows only
            return {"optimized_prompt": prompt, "unchanged": True, "reason": row.get("reason", ""), **out}
        return {"optimized_prompt": row["optimized_prompt"], "unchanged": bool(row["unchanged"]),
                "reason": row.get("unchanged_reason", ""), **out}

    async def check_health(self) -> None:
        await self.stage.backend.check_health()  # a dead vLLM engine: Serve replaces the replica


Target = serve.deployment(name="Target")(ModelReplica)
"""A target model: a local model batching requests, or a proxy to an upstream API."""


class OptimizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    context: str = ""


# Defined before Ingress: Serve pickles the class when it is decorated, with the module's
# globals as they are at that moment.
def _raise_for_failure(result: ChatResult) -> None:
    """A failed result as its HTTP error: a transient failure (the model busy, out of memory) is
    503 with Retry-After, so the client retries; the rest as `raise_if_failed` (400, 500)."""
    if result.error is not None and result.retryable:
        raise _Overloaded(result.error)
    raise_if_failed(result)


class _Overloaded(OpenAIError):
    def __init__(self, detail: str) -> None:
        super().__init__(503, f"the server is busy, retry shortly ({detail})", type="server_error",
                         code="overloaded")

    def response(self) -> JSONResponse:
        out = super().response()
        out.headers["Retry-After"] = "1"
        return out


api = FastAPI(title="bpo-ray")
install_error_handlers(api)  # before serve.ingress freezes the app


@serve.deployment
@serve.ingress(api)
class Ingress:
    """The OpenAI-compatible front door; composes the optimizer and the targets."""

    def __init__(self, optimizer: Any, targets: dict[str, Any], max_prompt_chars: int,
                 api_keys_env: list[str]) -> None:
        self.optimizer, self.targets = optimizer, targets
        self.max_prompt_chars = max_prompt_chars
        # Accepted keys, read here from the replica's environment; never logged, never returned.
        self._keys = {os.environ[name] for name in api_keys_env if os.environ.get(name)}
        self._auth = bool(api_keys_env)
        self.model_ids = [m for name in targets for m in (name, BPO_PREFIX + name)]

    def _check_key(self, request: Request) -> None:
        if not self._auth:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header.removeprefix("Bearer ").strip() not in self._keys:
            raise OpenAIError(401, "Incorrect or missing API key (send `Authorization: Bearer <key>`).",
                              type="invalid_request_error", code="invalid_api_key")

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": self.model_ids}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._check_key(request)
        return models_json(*self.model_ids)

    @api.post("/v1/optimize")
    async def optimize(self, body: OptimizeRequest, request: Request) -> dict[str, Any]:
        self._check_key(request)
        self._check_size(len(body.prompt) + len(body.context))
        return await self._optimized(body.prompt, body.context)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        self._check_key(request)
        if body.model not in self.model_ids:
            raise OpenAIError(404, f"The model `{body.model}` does not exist (this server serves "
                              f"{', '.join(self.model_ids)})", param="model", code="model_not_found")
        chat = to_chat_request(body, streams=True)
        self._check_size(sum(len(m["content"]) for m in chat.messages) + len(chat.prefill or ""))
        target = body.model.removeprefix(BPO_PREFIX)
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if body.model.startswith(BPO_PREFIX):
            chat, bpo = await self._optimize_last_user_turn(chat)
            extra["bpo"] = bpo
            headers[OPTIMIZED_PROMPT_HEADER] = quote(bpo["optimized_prompt"])
        request_id = new_request_id()
        if body.stream:
            pieces = await self._call_streamed(self.targets[target].answer_stream.options(stream=True).remote(chat))
            events = to_chunk_events(pieces, model=body.model, request_id=request_id,
                                     include_usage=body.include_usage(), extra=extra)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        result = await self._call(self.targets[target].answer.remote(chat))
        return JSONResponse({**to_completion_json(result, model=body.model, request_id=request_id), **extra},
                            headers=headers)

    async def _optimize_last_user_turn(self, chat: ChatRequest) -> tuple[ChatRequest, dict[str, Any]]:
        users = [i for i, m in enumerate(chat.messages) if m["role"] == "user"]
        if not users:
            raise OpenAIError(400, "bpo/ models optimize the last user message; the request has none",
                              param="messages")
        last = users[-1]
        bpo = await self._optimized(chat.messages[last]["content"], "")
        messages = list(chat.messages)
        messages[last] = {**messages[last], "content": bpo["optimized_prompt"]}
        return ChatRequest(messages=messages, prefill=chat.prefill, sampling=chat.sampling, logprobs=chat.logprobs,
                           top_logprobs=chat.top_logprobs), bpo

    async def _optimized(self, prompt: str, context: str) -> dict[str, Any]:
        started = time.monotonic()
        out = await self._call(self.optimizer.optimize.remote(prompt, context))
        return {**out, "latency_s": round(time.monotonic() - started, 4)}

    def _check_size(self, chars: int) -> None:
        if chars > self.max_prompt_chars:
            raise OpenAIError(413, f"the request's messages hold {chars} characters; this server takes at most "
                              f"{self.max_prompt_chars}", param="messages", code="request_too_large")

    async def _call(self, response: Any) -> Any:
        from ray.serve.exceptions import BackPressureError

        try:
            result = await response
        except BackPressureError as exc:
            raise _Overloaded(str(exc)) from exc
        if isinstance(result, ChatResult):
            _raise_for_failure(result)
        return result

    async def _call_streamed(self, pieces: Any) -> Any:
        """The target's stream once its first piece came (errors before it get their status)."""
        from ray.serve.exceptions import BackPressureError

        try:
            return await started(pieces, _raise_for_failure)
        except BackPressureError as exc:
            raise _Overloaded(str(exc)) from exc


def build_app(cfg: ServeConfig) -> Application:
    """The bound graph: Optimizer, one ModelServer per target, the Ingress."""
    from bpo_ray.models.resources import cluster_gpus
    from bpo_ray.optimize.job import optimize_stage_kwargs

    gpus = cluster_gpus()
    spec = cfg.optimizer_spec()
    optimizer = Optimizer.options(**cfg.optimizer_deployment.options(spec, cluster_gpus=gpus)).bind(
        spec.model_dump(), optimize_stage_kwargs(cfg))
    targets = {}
    for target in cfg.targets:
        model = target.model_spec()
        targets[target.target_name()] = Target.options(
            name=f"Target-{target.target_name()}".replace("/", "-"),
            **target.deployment.options(model, cluster_gpus=gpus)).bind(model)
    # The ingress only awaits the others: no CPU reserved, so two models fill a 2-core machine.
    return Ingress.options(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}).bind(optimizer, targets, cfg.max_prompt_chars,
                                                           cfg.api_keys_env)


def app(args: dict[str, Any]) -> Application:
    """The application builder for `serve run bpo_ray.serve.graph:app config=FILE` and `serve
    deploy` (args: `config`, a YAML file, or the settings inline)."""
    from bpo_ray.config import load_config

    args = dict(args)
    path = args.pop("config", None)
    return build_app(load_config(ServeConfig, path, overrides=args))


def start_graph(cfg: ServeConfig, *, name: str = "bpo", timeout_s: float = 600.0) -> str:
    """Deploy the graph on Serve (joining or starting Ray) and return its OpenAI base URL once
    it answers; the models load in their replicas before that."""
    from bpo_ray.serve.model_server import deploy, start_serve

    start_serve(cfg.host, cfg.port)
    return deploy(build_app(cfg), name=name, host=cfg.host, port=cfg.port, route_prefix=cfg.route_prefix,
                  health="/healthz", timeout_s=timeout_s)
