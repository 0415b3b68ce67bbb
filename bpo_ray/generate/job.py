"""The generate job: every target answers every row's original and optimized prompt (the
paper's llama2_infer.py, for many targets at once).

What generate supplies to the shared runner: its reader (optimize's output, or any file with a
prompt and an optimized prompt; read once and fanned out to one row per (id, target), each keyed
by its own target's model), one GenerateStage step per target (routed by the `target` column,
each its own actor pool), its tables (DIR/responses, DIR/rejected) and its settings.
"""

from __future__ import annotations

from typing import Any, Iterator

from bpo_ray.data.files import read_rows
from bpo_ray.data.ledger import row_key
from bpo_ray.data.prompts import PromptFields, normalize_prompt
from bpo_ray.data.rows import STATUS_OK, STATUS_REJECTED
from bpo_ray.generate.config import GenerateConfig
from bpo_ray.generate.stage import GenerateStage
from bpo_ray.runner import REJECTED_TABLE, OutputTable, StagePlan, StageStep, run_stage

RESPONSES_TABLE = "responses"
_INTERNAL = ("status", "reason", "retryable", "source")


def generate_plan(cfg: GenerateConfig) -> StagePlan:
    steps = [StageStep(GenerateStage, target.model_spec(), {"target": target.target_name(), "system_prompt": cfg.system_prompt,
                                               "context_separator": cfg.context_separator},
                       name=target.target_name())
             for target in cfg.targets]
    targets = [(t.target_name(), t.fingerprint()) for t in cfg.targets]
    reserved = tuple(GenerateStage.added_columns())

    row_kwargs = dict(fields=cfg.fields.model_dump(), optimized_field=cfg.optimized_field,
                      max_input_chars=cfg.max_input_chars, reserved=reserved)

    def read(salt: str):
        rows = read_rows(cfg.input, prompt_pair_row, **row_kwargs)
        return rows.flat_map(per_target, fn_kwargs={"targets": targets, "salt": salt})

    def rows_of_record(record: dict, *, source: str, index: int, salt: str) -> list[dict]:
        row = prompt_pair_row(record, source=source, index=index, **row_kwargs)
        return list(per_target(row, targets=targets, salt=salt))

    return StagePlan(
        config=cfg,
        steps=steps,
        read=read,
        output_table=OutputTable(RESPONSES_TABLE, exclude=_INTERNAL),
        rejected_table=OutputTable(REJECTED_TABLE, exclude=("status",)),
        settings={"system_prompt": cfg.system_prompt, "context_separator": cfg.context_separator,
                  "max_input_chars": cfg.max_input_chars},
        counters={"rows_shared_response": "shared_response"},
        route_by="target",
        rows_of_record=rows_of_record,
    )


def run_generate(cfg: GenerateConfig, streamed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the job; returns (and writes to DIR/summary.json) the run's summary. `streamed`:
    see `run_stage`."""
    return run_stage(generate_plan(cfg), streamed)


def prompt_pair_row(record: Any, *, source: str, index: int, fields: dict, optimized_field: str,
                    max_input_chars: int, reserved: tuple[str, ...]) -> dict:
    """A prompt row (see `normalize_prompt`) plus `optimized_prompt` and `unchanged`."""
    row = normalize_prompt(record, source=source, index=index, fields=PromptFields.model_validate(fields),
                           max_input_chars=max_input_chars, reserved=reserved)
    row["optimized_prompt"] = ""
    optimized = record.get(optimized_field) if isinstance(record, dict) else None
    if row["status"] == STATUS_OK:
        if not isinstance(optimized, str) or not optimized.strip():
            problem = "missing field" if optimized is None else "empty field" if isinstance(optimized, str) \
                else f"{type(optimized).__name__} in field"
            row.update(status=STATUS_REJECTED, reason=f"row {row['source']}: {problem} {optimized_field}")
        else:
            row["optimized_prompt"] = optimized
    # Files from other tools lack optimize's flag: a rewrite equal to the prompt is unchanged.
    flag = record.get("unchanged") if isinstance(record, dict) else None
    row["unchanged"] = bool(flag) if isinstance(flag, bool) else row["optimized_prompt"] == row["prompt"]
    return row


def per_target(row: dict, *, targets: list[tuple[str, str]], salt: str) -> Iterator[dict]:
    """One row per target, keyed by the row's prompts and that target's model."""
    content = [row["prompt"], row["context"], row["optimized_prompt"], row["unchanged"]]
    if row["status"] != STATUS_OK:
        content.append(row["source"])
    for name, fingerprint in targets:
        # The name too: two targets may share a model and its settings (to measure sampling).
        yield {**row, "target": name, "key": row_key([*content, name, fingerprint], salt)}
