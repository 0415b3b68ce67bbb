"""Settings of the pipeline: one YAML file, one section per stage, each section that verb's
own config (the same keys as `bpo-ray <verb> --config`), minus what the pipeline wires itself:
every stage's output folder under the run folder, and each stage's input from the stage before.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bpo_ray.config import format_validation_error
from bpo_ray.construct.config import ConstructConfig
from bpo_ray.errors import ConfigError
from bpo_ray.evaluate.config import EvaluateConfig
from bpo_ray.generate.config import GenerateConfig
from bpo_ray.optimize.config import OptimizeConfig
from bpo_ray.report.report import ReportConfig
from bpo_ray.train.config import TrainConfig

STAGES = ("construct", "train", "optimize", "generate", "evaluate", "report")
CONFIG_CLASSES: dict[str, type[BaseModel]] = {
    "construct": ConstructConfig, "train": TrainConfig, "optimize": OptimizeConfig,
    "generate": GenerateConfig, "evaluate": EvaluateConfig, "report": ReportConfig,
}
# Folders under the run folder.
FOLDERS = {"construct": "construct", "train": "optimizer", "optimize": "optimize", "generate": "generate",
           "evaluate": "evaluate", "report": "report"}


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    output: str = Field(..., description="The run folder: every stage writes under it; re-running resumes.")
    ray_address: str | None = Field(None, description="Ray cluster every stage joins (default: RAY_ADDRESS, else local).")
    # `construct` is also a (deprecated) BaseModel method: the field goes by an alias.
    construct_: dict[str, Any] | None = Field(None, alias="construct", description="construct's config (needs `input`: feedback). Omit to start from existing pairs (train.input).")
    train: dict[str, Any] | None = Field(None, description="train's config; omit to use optimize.optimizer as it is.")
    optimize: dict[str, Any] = Field(..., description="optimize's config (needs `input`: the prompts to evaluate on).")
    generate: dict[str, Any] = Field(default_factory=dict, description="generate's config (targets).")
    evaluate: dict[str, Any] = Field(default_factory=dict, description="evaluate's config (judge).")
    report: dict[str, Any] = Field(default_factory=dict, description="report's config (paper: set the paper's figures beside).")
    stream: bool = Field(True, description="Run optimize, generate and evaluate as one Ray Data plan, every model at work at once, where the cluster can hold all their actors (else one after another).")

    def folder(self, stage: str) -> str:
        return f"{self.output.rstrip('/')}/{FOLDERS[stage]}"

    def stage_configs(self) -> dict[str, BaseModel]:
        """Each present stage's validated config, wired to the run folder and the stage before.
        Errors name the section (`optimize.mode: ...`), all before any stage runs."""
        wired: dict[str, dict[str, Any]] = {}
        if self.construct_ is not None:
            wired["construct"] = {**self.construct_, "output": self.folder("construct")}
        if self.train is not None:
            wired["train"] = {"storage_path": f"{self.output.rstrip('/')}/train-runs",
                              **({"input": [self.folder("construct")]} if self.construct_ is not None else {}),
                              **self.train, "output": self.folder("train")}
        optimize = {**self.optimize, "output": self.folder("optimize")}
        if self.train is not None:
            optimizer = dict(optimize.get("optimizer") or {})
            optimizer.setdefault("model", self.folder("train"))
            optimize["optimizer"] = optimizer
        wired["optimize"] = optimize
        wired["generate"] = {"input": [self.folder("optimize")], **self.generate, "output": self.folder("generate")}
        wired["evaluate"] = {"input": [self.folder("generate")], **self.evaluate, "output": self.folder("evaluate")}
        wired["report"] = {"input": [self.folder("evaluate")], **self.report, "output": self.folder("report")}
        configs, problems = {}, []
        for stage, data in wired.items():
            if self.ray_address and "ray_address" in CONFIG_CLASSES[stage].model_fields:
                data.setdefault("ray_address", self.ray_address)
            try:
                configs[stage] = CONFIG_CLASSES[stage].model_validate(data)
            except ValidationError as exc:
                problems.append(format_validation_error(exc).replace("invalid config:\n", "").replace(
                    "  ", f"  {stage}.", -1))
        if problems:
            raise ConfigError("invalid pipeline config:\n" + "\n".join(problems))
        return configs
