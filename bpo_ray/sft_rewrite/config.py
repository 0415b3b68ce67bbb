"""Settings of the sft-rewrite job: optimize's settings plus the target that writes `res`."""

from __future__ import annotations

from pydantic import Field

from bpo_ray.generate.config import TargetSpec
from bpo_ray.optimize.config import OptimizeConfig


class SftRewriteConfig(OptimizeConfig):
    target: TargetSpec = Field(default_factory=TargetSpec, description="The model that answers the optimized prompts (`res`).")
    output_field: str = Field("output", description="Input field with the dataset's own answer, kept as `output`.")
    system_prompt: str | None = Field(None, description="A system message before every optimized prompt.")
