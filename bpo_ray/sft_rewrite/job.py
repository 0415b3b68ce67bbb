"""The sft-rewrite job: the paper's BPO-reproduced Alpaca. Each instruction is optimized, then a
target answers the optimized instruction, in one Ray Data plan (optimizer actors, then target
actors, rows streaming between them): instruction, input, output, optimized_prompt, res.
"""

from __future__ import annotations

from typing import Any

from bpo_ray.data.files import read_rows
from bpo_ray.data.ledger import row_key
from bpo_ray.data.prompts import PromptFields, normalize_prompt
from bpo_ray.data.rows import STATUS_OK
from bpo_ray.generate.stage import GenerateStage
from bpo_ray.optimize.job import optimize_plan
from bpo_ray.runner import REJECTED_TABLE, OutputTable, StageStep, run_stage
from bpo_ray.sft_rewrite.config import SftRewriteConfig

SFT_TABLE = OutputTable(
    "sft",
    ["id", "key", "prompt", "context", "reference_output", "optimized_prompt", "optimized_response", "unchanged",
     "optimize_model", "generate_model"],
    rename={"prompt": "instruction", "context": "input", "reference_output": "output", "optimized_response": "res"},
)


def run_sft_rewrite(cfg: SftRewriteConfig) -> dict[str, Any]:
    """Run the job; returns (and writes to DIR/summary.json) the run's summary."""
    plan = optimize_plan(cfg)
    template = plan.steps[0].kwargs["template"]
    plan.steps.append(StageStep(GenerateStage, cfg.target.model_spec(), {
        "target": cfg.target.target_name(), "system_prompt": cfg.system_prompt, "answers": ("optimized",),
        "context_separator": template["context_separator"]}))
    reserved = tuple({**plan.steps[0].stage.added_columns(), **GenerateStage.added_columns()})
    plan.read = lambda salt: read_rows(cfg.input, sft_row, fields=cfg.fields.model_dump(),
                                       output_field=cfg.output_field, max_input_chars=cfg.max_input_chars,
                                       key_salt=salt, reserved=(*reserved, "reference_output"))
    plan.output_table = SFT_TABLE
    plan.rejected_table = OutputTable(REJECTED_TABLE, exclude=("status",))
    plan.settings = {**plan.settings, "system_prompt": cfg.system_prompt}
    return run_stage(plan)


def sft_row(record: Any, *, source: str, index: int, fields: dict, output_field: str, max_input_chars: int,
            key_salt: str, reserved: tuple[str, ...]) -> dict:
    """A prompt row (see `normalize_prompt`) plus the dataset's own answer as `reference_output`."""
    row = normalize_prompt(record, source=source, index=index, fields=PromptFields.model_validate(fields),
                           max_input_chars=max_input_chars, reserved=reserved)
    answer = record.get(output_field) if isinstance(record, dict) else None
    row["reference_output"] = answer if isinstance(answer, str) else ""
    content = [row["prompt"], row["context"]] + ([] if row["status"] == STATUS_OK else [row["source"]])
    return {**row, "key": row_key(content, key_salt)}
