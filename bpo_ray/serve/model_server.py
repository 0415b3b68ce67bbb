"""An OpenAI-compatible HTTP server for one local model, as a Ray Serve application.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (raw text, e.g. the
prompt layout an optimizer was trained on) and GET /health.

Each replica holds one backend (one model); concurrent requests to a replica, chat and text
alike, are gathered by `serve.batch` into one `chat_batch` call, which is where local models
get their throughput. A vLLM engine schedules requests itself (continuous batching): with
`provider: vllm` each request goes straight to it.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import ray
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application

from bpo_ray.errors import ConfigError
from bpo_ray.models import ChatRequest, ChatResult, ModelSpec, build_backend
from bpo_ray.serve.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    check_model,
    install_error_handlers,
    model_json,
    models_json,
    new_request_id,
    raise_if_failed,
    to_chat_request,
    to_chunk_events,
    to_completion_json,
    to_text_completion_json,
    to_text_request,
)
from bpo_ray.serve.streaming import TextPiece, started, stream_reply
from bpo_ray.terminal import quiet_ray_consoles

api = FastAPI(title="bpo-ray model server")
# serve.ingress pickles the app when the class is decorated, so handlers go in first.
install_error_handlers(api)


class ModelReplica:
    """One model per replica, concurrent requests batched into one `chat_batch` call. Served
    on its own as `ModelServer`; in the BPO serving graph (bpo_ray/serve/graph.py) a target,
    called through `answer` (Serve takes one FastAPI ingress per application)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model_id = spec.model
        # An upstream API's key from the replica's environment: never a constructor argument,
        # which Serve keeps in its controller's state.
        self.backend = build_backend(spec, api_key=spec.api_key() if spec.is_http else None)
        # The decorator's batch size is fixed at import time; the spec decides it per app.
        self._generate.set_max_batch_size(spec.batch_size)
        self.batches = 0
        self.batched_requests = 0
        self.largest_batch = 0

    async def __del__(self) -> None:
        # Serve calls this on replica shutdown; a failed __init__ may have left no backend.
        backend = getattr(self, "backend", None)
        if backend is not None:
            await backend.aclose()

    # Wait a little for company: a CPU batch takes seconds, so 0.1 s buys a fuller batch cheaply.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.1)
    async def _generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        self.batches += 1
        self.batched_requests += len(requests)
        self.largest_batch = max(self.largest_batch, len(requests))
        return await self.backend.chat_batch(requests)

    async def check_health(self) -> None:
        """Serve's periodic health check: a backend that cannot answer any more (a vLLM engine
        whose core process died) fails it, and Serve replaces the replica."""
        await self.backend.check_health()

    async def answer(self, request: ChatRequest) -> ChatResult:
        """One request, batched with the replica's others (a vLLM engine batches them itself:
        each goes straight in)."""
        if self.backend.continuous_batching:
            return (await self.backend.chat_batch([request]))[0]
        return await self._generate(request)

    async def answer_stream(self, request: ChatRequest) -> AsyncIterator[TextPiece | ChatResult]:
        """One request, batched with the replica's others: its text pieces as they are written,
        then the result (call through a handle with `.options(stream=True)`)."""
        async for piece in stream_reply(self.answer, request):
            yield piece


@serve.deployment
@serve.ingress(api)
class ModelServer(ModelReplica):
    """A `ModelReplica` behind /v1/models, /v1/chat/completions, /v1/completions and /health."""

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_id, "batches": self.batches,
                "batched_requests": self.batched_requests, "largest_batch": self.largest_batch}

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return models_json(self.model_id)

    @api.get("/v1/models/{model:path}")
    async def get_model(self, model: str) -> dict[str, Any]:
        check_model(model, self.model_id)
        return model_json(self.model_id)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        check_model(body.model, self.model_id)
        request = to_chat_request(body, streams=True)
        if body.stream:
            pieces = await started(self.answer_stream(request), raise_if_failed)
            return StreamingResponse(to_chunk_events(pieces, model=self.model_id, request_id=new_request_id(),
                                                     include_usage=body.include_usage()),
                                     media_type="text/event-stream")
        result = await self._answer(request)
        return JSONResponse(to_completion_json(result, model=self.model_id,
                                               request_id=new_request_id()))

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> JSONResponse:
        check_model(body.model, self.model_id)
        result = await self._answer(to_text_request(body))
        return JSONResponse(to_text_completion_json(result, model=self.model_id,
                                                    request_id=new_request_id()))

    async def _answer(self, request: ChatRequest) -> ChatResult:
        try:
            return await self.answer(request)
        except Exception as exc:  # a backend bug must still answer in OpenAI's shape
            raise OpenAIError(500, f"{type(exc).__name__}: {exc}", type="server_error") from exc


def build_model_app(spec: ModelSpec, *, num_replicas: int = 1,
                    autoscaling: dict[str, Any] | None = None, num_cpus: float = 1,
                    num_gpus: float | None = None, cluster_gpus: float | None = None) -> Application:
    """The bound app: `num_replicas` fixed replicas, or Serve autoscaling when `autoscaling`
    is given (keys of Serve's autoscaling_config; target_ongoing_requests defaults to one batch).
    `num_gpus` None: one GPU per replica when the cluster has GPUs (see models/resources.py)."""
    from bpo_ray.models.resources import actor_resources
    from bpo_ray.models.resources import cluster_gpus as running_cluster_gpus

    gpus = running_cluster_gpus() if cluster_gpus is None else cluster_gpus
    options: dict[str, Any] = {
        "ray_actor_options": actor_resources(spec, cluster_gpus=gpus, num_cpus=num_cpus, num_gpus=num_gpus),
        # Serve's default (5) would cap batches below spec.batch_size; twice lets the next
        # batch fill while one runs.
        "max_ongoing_requests": 2 * spec.batch_size,
    }
    if autoscaling is not None:
        options["autoscaling_config"] = {"target_ongoing_requests": spec.batch_size, **autoscaling}
    else:
        options["num_replicas"] = num_replicas
    return ModelServer.options(**options).bind(spec)


def start_model_server(spec: ModelSpec, *, host: str = "127.0.0.1", port: int = 8000,
                       name: str = "bpo-model", route_prefix: str = "/", num_replicas: int = 1,
                       autoscaling: dict[str, Any] | None = None, num_cpus: float = 1,
                       num_gpus: float | None = None, timeout_s: float = 300.0) -> str:
    """Deploy the model server and return its OpenAI base URL (".../v1") once it answers."""
    start_serve(host, port)
    app = build_model_app(spec, num_replicas=num_replicas, autoscaling=autoscaling,
                          num_cpus=num_cpus, num_gpus=num_gpus)
    return deploy(app, name=name, host=host, port=port, route_prefix=route_prefix, health="/health",
                  timeout_s=timeout_s)


def start_serve(host: str, port: int) -> None:
    """Ray (joined or started) and Serve's HTTP proxy on host:port. HTTP options are
    cluster-wide in Serve: if Serve already runs with another host/port, those stay in effect
    (shut Serve down first to change them)."""
    if not ray.is_initialized():
        ray.init()
    quiet_ray_consoles()  # Serve's driver-side console logger (set up when ray.serve is imported)
    serve.start(http_options={"host": host, "port": port})


def deploy(app: Application, *, name: str, host: str, port: int, route_prefix: str, health: str,
           timeout_s: float) -> str:
    """Run `app` and return its OpenAI base URL (".../v1") once `health` answers; a replica
    that fails to start is reported with its own error."""
    try:
        serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    except RuntimeError as exc:
        # Serve only says "failed to update the deployments"; the replica's error is in status.
        cause = _deploy_failure(name) or str(exc)
        serve.delete(name)
        if cause.startswith(_CONFIG_ERROR):
            raise ConfigError(cause.removeprefix(_CONFIG_ERROR)) from exc
        raise RuntimeError(f"{name!r} failed to start: {cause}") from exc
    client_host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
    base = f"http://{client_host}:{port}{route_prefix.rstrip('/')}"
    _wait_healthy(f"{base}{health}", timeout_s)
    return f"{base}/v1"


def stop_model_server(name: str = "bpo-model") -> None:
    """Delete the app (its replicas and models); Serve itself keeps running."""
    serve.delete(name)


_CONFIG_ERROR = f"{ConfigError.__module__}.{ConfigError.__qualname__}: "


def _deploy_failure(name: str) -> str | None:
    """The last line of a failed replica's traceback (the exception itself), if Serve kept one."""
    app = serve.status().applications.get(name)
    for deployment in (app.deployments.values() if app else ()):
        lines = [line.strip() for line in deployment.message.splitlines() if line.strip()]
        if deployment.status == "DEPLOY_FAILED" and lines:
            return lines[-1]
    return None


def _wait_healthy(url: str, timeout_s: float) -> None:
    # serve.run returns when replicas are up, but the proxy may route a moment later.
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"model server at {url} did not become healthy in {timeout_s:.0f}s: {last}")
