"""Settings of the construct job (YAML keys; CLI flags override them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bpo_ray.construct.parse import LengthFilter
from bpo_ray.data.feedback import FeedbackFields
from bpo_ray.data.ledger import OutputFormat
from bpo_ray.models.spec import ModelSpec


class ConstructConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: list[str] = Field(..., min_length=1, description="Feedback files or folders (JSON, JSONL, Parquet; paths or URIs).")
    output: str = Field(..., description="Output folder: pairs/, rejected/, summary.json. Re-running resumes.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The model that writes the optimized prompts.")
    fields: FeedbackFields = Field(default_factory=FeedbackFields, description="Input field names.")
    limit: int | None = Field(None, ge=1, description="Use only the first N input rows.")
    num_actors: int | None = Field(None, ge=1, description="Stage actors (default: 2 for HTTP models, 1 per local model).")
    cpus_per_actor: float | None = Field(None, ge=0, description="CPUs each actor reserves (default: 0.25 for HTTP, 1 for local).")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs each local-model actor reserves (default: 1 when model.device is cuda).")
    max_input_chars: int = Field(32_000, ge=100, description="Rows whose instruction+context+responses exceed this are rejected.")
    repair: bool = Field(True, description="Give a reply without the optimized instruction one follow-up request.")
    length_filter: LengthFilter = Field(default_factory=LengthFilter, description="The paper's length-ratio filter.")
    output_format: OutputFormat = Field("parquet", description="parquet or jsonl.")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value
