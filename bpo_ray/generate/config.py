"""Settings of the generate job (YAML keys; CLI flags override them)."""

from __future__ import annotations

from pydantic import Field, field_validator

from bpo_ray.data.prompts import PromptFields
from bpo_ray.models.spec import ModelSpec, Sampling
from bpo_ray.optimizer_template import CONTEXT_SEPARATOR
from bpo_ray.runner import StageJobConfig


def paper_sampling() -> Sampling:
    """The paper's target sampling (thu-coai/BPO src/inference/llama2_infer.py)."""
    return Sampling(temperature=0.7, top_p=1.0, max_tokens=1024)


class TargetSpec(ModelSpec):
    """A target model: a ModelSpec whose sampling defaults to the paper's generation script."""

    sampling: Sampling = Field(default_factory=paper_sampling)
    name: str | None = Field(None, description="Name in the `target` column (default: the model name).")

    def target_name(self) -> str:
        return self.name or self.model

    def model_spec(self) -> ModelSpec:
        """The spec without the name, as the model layer takes it."""
        return ModelSpec.model_validate(self.model_dump(exclude={"name"}))


class GenerateConfig(StageJobConfig):
    targets: list[TargetSpec] = Field(
        default_factory=lambda: [TargetSpec()], min_length=1,
        description="Target models; each answers the original and the optimized prompt of every row.",
    )
    fields: PromptFields = Field(default_factory=PromptFields, description="Input field names.")
    optimized_field: str = Field("optimized_prompt", description="Input field holding the optimized prompt.")
    system_prompt: str | None = Field(None, description="A system message sent before every prompt (both kinds alike).")
    context_separator: str = Field(CONTEXT_SEPARATOR, description="What joins a prompt (either kind) and its context.")
    max_input_chars: int = Field(16_000, ge=100, description="Rows whose prompt+context exceed this are rejected.")

    @field_validator("targets")
    @classmethod
    def _distinct_names(cls, targets: list[TargetSpec]) -> list[TargetSpec]:
        return distinct_target_names(targets)


def distinct_target_names(targets: list[TargetSpec]) -> list[TargetSpec]:
    """Targets are told apart by name (output rows, served model ids): no two alike."""
    names = [t.target_name() for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"targets need distinct names (set `name`); got {names}")
    return targets
