"""The optimize job: prompts -> optimized prompts, on Ray Data (the paper's infer scripts, in bulk).

What optimize supplies to the shared runner (`bpo_ray/runner.py`): its reader (test sets,
instruction data, any job's output; every input column carried), its stage (OptimizeStage: the
template, the mode's sampling, the guards), its tables (DIR/optimized, DIR/rejected) and the
settings that shape its output (template, guards), which go into every row's resume key.
"""

from __future__ import annotations

from typing import Any

from bpo_ray.data.prompts import read_prompts
from bpo_ray.models.embedded import resolve_model_path
from bpo_ray.optimize.config import OptimizeConfig, OptimizerSettings
from bpo_ray.optimize.stage import OptimizeStage
from bpo_ray.optimizer_template import PRESETS, OptimizerTemplate, resolve_template
from bpo_ray.runner import REJECTED_TABLE, OutputTable, StagePlan, StageStep, run_stage

OPTIMIZED_TABLE = "optimized"
_INTERNAL = ("status", "reason", "retryable", "source", "raw_reply")


def optimizer_template(cfg: OptimizerSettings) -> OptimizerTemplate:
    """The layout the optimizer is fed: the setting, else the trained folder's own, else the
    default for a plain local model (chat for an API, which always takes a chat)."""
    spec = cfg.optimizer
    if cfg.template is None and spec.is_http:
        return PRESETS["chat"]
    return resolve_template(cfg.template, None if spec.is_http else resolve_model_path(spec.model))


def optimize_stage_kwargs(cfg: OptimizerSettings) -> dict[str, Any]:
    """OptimizeStage's arguments besides the model (the optimize job's and the serving graph's)."""
    return {"template": optimizer_template(cfg).model_dump(), "mode": cfg.mode, "keep_all": cfg.keep_all,
            "length_filter": cfg.length_filter.model_dump(), "semantic_gate": cfg.semantic_gate.model_dump()}


def optimize_plan(cfg: OptimizeConfig) -> StagePlan:
    kwargs = optimize_stage_kwargs(cfg)
    step = StageStep(OptimizeStage, cfg.optimizer_spec(), kwargs)
    reserved = tuple(OptimizeStage.added_columns())
    return StagePlan(
        config=cfg,
        steps=[step],
        read=lambda salt: read_prompts(cfg.input, cfg.fields, max_input_chars=cfg.max_input_chars,
                                       key_salt=salt, reserved=reserved),
        output_table=OutputTable(OPTIMIZED_TABLE, exclude=_INTERNAL),
        rejected_table=OutputTable(REJECTED_TABLE, exclude=("status",)),
        settings={**kwargs, "max_input_chars": cfg.max_input_chars},
        counters={"rows_unchanged": "unchanged"},
    )


def run_optimize(cfg: OptimizeConfig, streamed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the job; returns (and writes to DIR/summary.json) the run's summary. `streamed`:
    see `run_stage`."""
    return run_stage(optimize_plan(cfg), streamed)
