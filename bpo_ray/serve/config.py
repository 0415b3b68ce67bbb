"""Settings of the BPO serving graph (`bpo-ray serve --config`, `serve run`, `serve deploy`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bpo_ray.generate.config import TargetSpec, distinct_target_names
from bpo_ray.models.spec import ModelSpec
from bpo_ray.optimize.config import OptimizerSettings

BPO_PREFIX = "bpo/"


class DeploymentSettings(BaseModel):
    """One deployment's replicas, their resources and their queues (Ray Serve options)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    max_replicas: int = Field(1, ge=1, description="Replicas under load (above min_replicas: Serve autoscales).")
    target_ongoing_requests: float | None = Field(None, gt=0, description="Requests per replica the autoscaler aims at (default: the model's batch size).")
    max_ongoing_requests: int | None = Field(None, ge=1, description="Requests a replica takes at once (default: twice the batch size).")
    max_queued_requests: int = Field(64, ge=-1, description="Requests waiting for a replica beyond which callers get 503 (-1: no limit).")
    num_cpus: float | None = Field(None, ge=0, description="CPUs per replica (default: 1 for a local model, 0.25 for an API proxy).")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica (default: 1 when the cluster has GPUs and the model is local).")
    upscale_delay_s: float = Field(2.0, ge=0, description="Seconds of high load before adding a replica.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Seconds of low load before removing one.")
    look_back_period_s: float = Field(30.0, gt=0, description="Seconds of load the autoscaler averages over.")

    def options(self, spec: ModelSpec, *, cluster_gpus: float) -> dict[str, Any]:
        """`Deployment.options(...)` for a deployment holding `spec`."""
        from bpo_ray.models.resources import actor_resources

        options: dict[str, Any] = {
            "ray_actor_options": actor_resources(spec, cluster_gpus=cluster_gpus, num_cpus=self.num_cpus,
                                                 num_gpus=self.num_gpus),
            # Serve's default (5) would cap a batch below the model's batch size.
            "max_ongoing_requests": self.max_ongoing_requests or 2 * spec.batch_size,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.max_replicas > self.min_replicas:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "target_ongoing_requests": self.target_ongoing_requests or spec.batch_size,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s,
            }
        else:
            options["num_replicas"] = max(1, self.min_replicas)
        return options


class ServedTarget(TargetSpec):
    """A target model (a local model, or a proxy to an OpenAI-compatible API) and its deployment."""

    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings, description="Replicas and resources.")

    def model_spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.model_dump(exclude={"name", "deployment"}))


def _embedded_target() -> list[ServedTarget]:
    return [ServedTarget()]


class ServeConfig(OptimizerSettings):
    """The graph: one optimizer, one or more targets, one OpenAI-compatible ingress."""

    targets: list[ServedTarget] = Field(default_factory=_embedded_target, min_length=1,
                                        description="Target models, each served as X and bpo/X.")
    optimizer_deployment: DeploymentSettings = Field(default_factory=DeploymentSettings, description="The optimizer's replicas and resources.")
    host: str = Field("127.0.0.1", description="Address the HTTP proxy listens on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field("/", description="Where the API lives under the server's root.")
    max_prompt_chars: int = Field(16_000, ge=100, description="Requests whose messages exceed this get 413.")
    api_keys_env: list[str] = Field(default_factory=list, description="Names of environment variables (on the cluster) holding accepted API keys; none: no auth.")

    @field_validator("targets")
    @classmethod
    def _distinct_names(cls, targets: list[ServedTarget]) -> list[ServedTarget]:
        if bad := [t.target_name() for t in targets if t.target_name().startswith(BPO_PREFIX)]:
            raise ValueError(f"target names may not start with {BPO_PREFIX!r}: {bad}")
        return distinct_target_names(targets)
