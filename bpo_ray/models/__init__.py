"""The model layer: every stage that talks to an LLM goes through here."""

from __future__ import annotations

from typing import Any

from bpo_ray.models.base import ChatBackend, ChatRequest, ChatResult, TokenLogprob
from bpo_ray.models.spec import EMBEDDED_MODEL, ModelSpec, RateLimit, Sampling

__all__ = [
    "EMBEDDED_MODEL", "ChatBackend", "ChatRequest", "ChatResult", "ModelSpec", "RateLimit",
    "Sampling", "TokenLogprob", "build_backend",
]


def build_backend(spec: ModelSpec, *, rate_limiter: Any = None) -> ChatBackend:
    """The one place a spec becomes a backend (imports stay lazy: torch/vLLM are heavy)."""
    if spec.provider == "openai":
        from bpo_ray.models.http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(spec, rate_limiter=rate_limiter)
    if spec.provider == "local":
        from bpo_ray.models.local import TransformersBackend

        return TransformersBackend(spec)
    from bpo_ray.errors import ConfigError

    raise ConfigError(f"model.provider: {spec.provider!r} is not available in this build yet")
