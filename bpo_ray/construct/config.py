"""Settings of the construct job (YAML keys; CLI flags override them)."""

from __future__ import annotations

from pydantic import Field

from bpo_ray.length_filter import LengthFilter
from bpo_ray.data.feedback import FeedbackFields
from bpo_ray.models.spec import ModelSpec
from bpo_ray.runner import StageJobConfig


class ConstructConfig(StageJobConfig):
    model: ModelSpec = Field(default_factory=ModelSpec, description="The model that writes the optimized prompts.")
    fields: FeedbackFields = Field(default_factory=FeedbackFields, description="Input field names.")
    max_input_chars: int = Field(32_000, ge=100, description="Rows whose instruction+context+responses exceed this are rejected.")
    repair: bool = Field(True, description="Give a reply without the optimized instruction one follow-up request.")
    length_filter: LengthFilter = Field(default_factory=LengthFilter, description="The paper's length-ratio filter.")
