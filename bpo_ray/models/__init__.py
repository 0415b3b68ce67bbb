"""The model layer: every stage that talks to an LLM goes through here."""

from __future__ import annotations

import asyncio
from typing import Any

from bpo_ray.errors import ModelUnavailableError
from bpo_ray.models.base import ChatBackend, ChatRequest, ChatResult, TokenLogprob
from bpo_ray.models.spec import EMBEDDED_MODEL, ModelSpec, RateLimit, Sampling

__all__ = [
    "EMBEDDED_MODEL", "ChatBackend", "ChatRequest", "ChatResult", "ModelSpec", "RateLimit",
    "Sampling", "TokenLogprob", "build_backend", "check_model",
]


def build_backend(spec: ModelSpec, *, rate_limiter: Any = None, api_key: str | None = None) -> ChatBackend:
    """The one place a spec becomes a backend (imports stay lazy: torch/vLLM are heavy)."""
    if spec.provider == "openai":
        from bpo_ray.models.http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(spec, rate_limiter=rate_limiter, api_key=api_key)
    if spec.provider == "local":
        from bpo_ray.models.local import TransformersBackend

        return TransformersBackend(spec)
    if spec.provider == "vllm":
        from bpo_ray.models.vllm_backend import VLLMBackend

        return VLLMBackend(spec)
    raise ModelUnavailableError(f"model.provider: {spec.provider!r} is not available in this build")


def check_model(spec: ModelSpec, *, api_key: str | None = None) -> None:
    """Fail in seconds, before any actor starts, when the model cannot serve the job: an API
    that rejects the key, does not know the model or does not answer; a local folder that is
    missing or unloadable; a provider this build lacks. Raises ModelUnavailableError."""
    if spec.provider == "openai":
        from bpo_ray.models.http import OpenAIHTTPBackend

        backend = OpenAIHTTPBackend(spec, api_key=api_key)

        async def probe() -> None:
            try:
                await backend.probe()
            finally:
                await backend.aclose()

        asyncio.run(probe())
    elif spec.provider in ("local", "vllm"):
        from bpo_ray.models.embedded import resolve_model_path
        from bpo_ray.models.local import check_loadable

        if spec.provider == "vllm":  # installed where the driver runs, as on every node of a cluster
            from bpo_ray.models.vllm_backend import import_vllm

            import_vllm()
        check_loadable(resolve_model_path(spec.model))
    else:
        build_backend(spec)  # raises for a provider this build lacks
