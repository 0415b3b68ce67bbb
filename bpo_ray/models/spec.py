"""The model spec: everything a stage needs to know to talk to one LLM.

Configs and CLI flags fill it in; `bpo_ray.models.build_backend` turns it into a backend.
It never holds a secret, only the *name* of the environment variable that does.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bpo_ray.errors import ConfigError

EMBEDDED_MODEL = "embedded"
"""Model name that selects the embedded default (SmolLM2-135M-Instruct, shipped in a wheel)."""


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Most tokens to generate per choice.")
    n: int = Field(1, ge=1, le=16, description="Choices per request.")
    stop: list[str] | None = Field(None, description="Strings that end generation.")
    seed: int | None = Field(None, description="Sampling seed, for reproducible runs.")


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_s: float | None = Field(
        None, gt=0, description="Client-side ceiling on requests per second, over all actors."
    )
    tokens_per_min: float | None = Field(
        None, gt=0, description="Client-side ceiling on prompt+completion tokens per minute."
    )


class VLLMOptions(BaseModel):
    """Engine settings of `provider: vllm`. They change how fast, not what: the spec's
    fingerprint leaves them out."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(
        1, ge=1, le=64,
        description="GPUs one engine shards the model over (one actor reserves them all; one node).",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1,
        description="Share of GPU memory the engine takes (default 0.9); on vLLM's CPU build the share "
        "of RAM for weights and KV cache (default 0.2, since several actors share a node).",
    )
    max_model_len: int | None = Field(None, ge=16, description="Context length (default: the model's).")
    max_num_seqs: int | None = Field(
        None, ge=1, description="Sequences the engine decodes at once (default: vLLM's for the device).",
    )
    enforce_eager: bool = Field(
        False,
        description="Skip graph capture / torch.compile: starts in seconds instead of a minute or "
        "more, decodes slower (tests use it).",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Any other vllm.AsyncEngineArgs field, passed as is.",
    )


class ModelSpec(BaseModel):
    """Which model, where, how to sample from it, and how hard to push it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    provider: Literal["local", "openai", "vllm"] = Field(
        "local",
        description="local: transformers in-process; openai: any OpenAI-compatible HTTP API; "
        "vllm: a vLLM engine in each actor (continuous batching; GPU clusters, or vLLM's CPU build).",
    )
    model: str = Field(
        EMBEDDED_MODEL,
        description="Model name (HTTP), HF folder/id (local), or 'embedded' for the built-in default.",
    )
    base_url: str | None = Field(None, description="Base URL of the OpenAI-compatible API (…/v1).")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Name of the env var holding the API key (never the key itself)."
    )
    sampling: Sampling = Field(default_factory=Sampling)
    concurrency: int = Field(
        64, ge=1, le=4096,
        description="HTTP requests in flight per stage actor (the connection pool is sized to it). "
        "The default with 2 actors reaches about 20 requests/s at 6 s per reply; set "
        "rate_limit to stay under the API's ceiling.",
    )
    batch_size: int = Field(
        16, ge=1, le=4096, description="Prompts per generate call of a local model (one batch per block)."
    )
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(6, ge=0, le=50, description="Retries on 429/5xx/timeouts/connection errors.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device for local models.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype for local models (auto: bf16 on GPU, fp32 on CPU)."
    )
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="Engine settings of provider vllm.")
    supports_prefill: bool | None = Field(
        None,
        description="Whether the endpoint continues a pre-filled assistant turn "
        "(vLLM's continue_final_message). None: yes for local models and the project's own server.",
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.provider == "openai" and not self.base_url and self.model == EMBEDDED_MODEL:
            raise ValueError("provider 'openai' needs a model name (and usually base_url)")
        if self.model.startswith("sk-"):
            raise ValueError("model looks like an API key; put keys in the env var named by api_key_env")
        return self

    @property
    def prefill(self) -> bool:
        return self.provider != "openai" if self.supports_prefill is None else self.supports_prefill

    @property
    def is_http(self) -> bool:
        return self.provider == "openai"

    @property
    def continuous_batching(self) -> bool:
        """The backend schedules requests itself (vLLM): callers send them as they come
        instead of gathering them into batches."""
        return self.provider == "vllm"

    def api_key(self) -> str:
        """Read the key from the environment; local servers accept any non-empty key."""
        if self.api_key_env and os.environ.get(self.api_key_env):
            return os.environ[self.api_key_env]
        if self.base_url and _is_loopback(self.base_url):
            return "local"
        raise ConfigError(
            f"model.api_key_env: environment variable {self.api_key_env!r} is not set "
            f"(needed for {self.base_url or 'the OpenAI API'})"
        )

    def fingerprint(self) -> str:
        """Identity of the outputs this spec produces: model, endpoint, sampling and, for local
        models, the weights on disk (a retrained model written to the same folder is a new model).

        Concurrency, batch size, rate limits, retries and keys change how fast, not what, so they
        stay out: a resumed run with a different concurrency still reuses earlier rows.
        """
        ident = {"provider": self.provider, "model": self.model, "base_url": self.base_url,
                 "sampling": self.sampling.model_dump(), "prefill": self.prefill}
        if self.provider != "openai":
            from bpo_ray.models.weights import weights_fingerprint

            ident["weights"] = weights_fingerprint(self.model)
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def display_name(self) -> str:
        return self.model if self.provider != "openai" else f"{self.model}@{self.base_url}"


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host in {"localhost", "::1"} or host.startswith("127.")
