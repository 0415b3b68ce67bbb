"""The construct job: feedback files -> (prompt, optimized prompt) pairs, on Ray Data.

What construct supplies to the shared runner (`bpo_ray/runner.py`): its reader (feedback
files, one task per file), its stage (ConstructStage: construction prompt, repair round, length
filter), its tables (DIR/pairs, DIR/rejected) and the settings that shape its output (prompt
texts, repair, filter, input limit), which go into every row's resume key.
"""

from __future__ import annotations

from typing import Any

from bpo_ray.construct.config import ConstructConfig
from bpo_ray.construct.prompts import prompt_settings
from bpo_ray.construct.stage import ConstructStage
from bpo_ray.data.feedback import read_feedback
from bpo_ray.runner import REJECTED_TABLE, OutputTable, StagePlan, StageStep, run_stage

PAIRS_TABLE = OutputTable(
    "pairs",
    ["id", "key", "instruction", "context", "has_context", "optimized_prompt", "comparison", "construct_model",
     "repaired", "construct_prompt_tokens", "construct_completion_tokens", "construct_requests",
     "construct_retries", "construct_latency_s"],
    rename={"instruction": "prompt"},
)
REJECTED = OutputTable(
    REJECTED_TABLE,
    ["id", "key", "source", "instruction", "context", "has_context", "good_res", "bad_res", "reason", "retryable",
     "raw_reply", "optimized_prompt", "construct_model", "construct_prompt_tokens", "construct_completion_tokens",
     "construct_requests", "construct_retries", "construct_latency_s"],
)


def run_construct(cfg: ConstructConfig) -> dict[str, Any]:
    """Run the job; returns (and writes to DIR/summary.json) the run's summary."""
    return run_stage(StagePlan(
        config=cfg,
        steps=[StageStep(ConstructStage, cfg.model,
                         {"length_filter": cfg.length_filter.model_dump(), "repair": cfg.repair})],
        read=lambda salt: read_feedback(cfg.input, cfg.fields, max_input_chars=cfg.max_input_chars, key_salt=salt),
        output_table=PAIRS_TABLE,
        rejected_table=REJECTED,
        settings={"prompts": prompt_settings(), "repair": cfg.repair,
                  "length_filter": cfg.length_filter.model_dump(), "max_input_chars": cfg.max_input_chars},
        counters={"rows_repaired": "repaired"},
    ))
