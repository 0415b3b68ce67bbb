"""Settings of the optimize job (YAML keys; CLI flags override them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bpo_ray.data.prompts import PromptFields
from bpo_ray.length_filter import LengthFilter
from bpo_ray.models.spec import ModelSpec, Sampling
from bpo_ray.optimize.similarity import SemanticGate
from bpo_ray.optimizer_template import OptimizerTemplate
from bpo_ray.runner import StageJobConfig

Mode = Literal["stable", "aggressive", "greedy"]

# The paper's sampling (thu-coai/BPO src/infer_example.py): stable keeps one sample at a low
# temperature and sometimes keeps the prompt as it is; aggressive draws several at a higher
# temperature and keeps the one that changed the most.
MODE_SAMPLING: dict[str, dict] = {
    "stable": {"temperature": 0.6, "top_p": 0.9, "n": 1},
    "aggressive": {"temperature": 0.9, "top_p": 0.9},
    "greedy": {"temperature": 0.0, "top_p": 1.0, "n": 1},
}


def _optimizer_default() -> ModelSpec:
    return ModelSpec(sampling=Sampling(max_tokens=512))


class OptimizerSettings(BaseModel):
    """The optimizer and how its rewrites are made and checked: what `bpo-ray optimize` and the
    serving graph's Optimizer deployment share."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    optimizer: ModelSpec = Field(
        default_factory=_optimizer_default,
        description="The prompt optimizer: a `bpo-ray train` folder, a plain HF folder, 'embedded', or a model "
        "behind base_url. Its temperature, top_p and n come from `mode`.",
    )
    template: str | OptimizerTemplate | None = Field(
        None,
        description="Prompt layout: a preset (bpo-ray, chat, bpo-llama2: the released BPO model's), a "
        "bpo_template.json, or inline. Default: the optimizer folder's own bpo_template.json, else bpo-ray "
        "(local) or chat (HTTP).",
    )
    mode: Mode = Field("stable", description="stable (the paper's sampling), aggressive (several candidates), greedy.")
    candidates: int = Field(5, ge=2, le=16, description="Samples per prompt in aggressive mode.")
    keep_all: bool = Field(False, description="Aggressive mode: also keep every usable candidate (JSON list column `candidates`).")
    length_filter: LengthFilter = Field(default_factory=LengthFilter, description="The paper's length-ratio filter on rewrites.")
    semantic_gate: SemanticGate = Field(default_factory=SemanticGate, description="Optional: reject rewrites too far in meaning.")

    def optimizer_spec(self) -> ModelSpec:
        """The optimizer with the mode's sampling (so the mode is part of its fingerprint)."""
        sampling = {**self.optimizer.sampling.model_dump(), **MODE_SAMPLING[self.mode]}
        if self.mode == "aggressive":
            sampling["n"] = self.candidates
        return self.optimizer.model_copy(update={"sampling": Sampling.model_validate(sampling)})


class OptimizeConfig(StageJobConfig, OptimizerSettings):
    fields: PromptFields = Field(default_factory=PromptFields, description="Input field names.")
    max_input_chars: int = Field(16_000, ge=100, description="Rows whose prompt+context exceed this are rejected.")
