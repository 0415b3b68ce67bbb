"""The evaluate job: a judge compares the answers to original and optimized prompts, pairwise
(the paper's gpt4_score.py + cal_gpt4_score.py and claude_score.py, distributed and resumable).

What evaluate supplies to the shared runner: its reader (generate's output, or any file with a
prompt, optional context and both answers; one row per pair and order), its stage (JudgeStage),
its tables (DIR/judgments, DIR/rejected) and its settings (the judge prompt with its version,
the verdict mode), which with the judge model go into every judgment's key: a re-run makes no
call for what is done, a new judge or prompt judges again. After the run, the statistics over
every judgment of this setting go into summary.json (bpo_ray/evaluate/stats.py).
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import pyarrow.compute as pc

from bpo_ray.data.files import read_rows
from bpo_ray.data.ledger import read_table, row_key, write_summary
from bpo_ray.data.prompts import normalize_prompt
from bpo_ray.data.rows import STATUS_OK, STATUS_REJECTED, first_field, reason_label
from bpo_ray.errors import ConfigError
from bpo_ray.evaluate.budget import BUDGET_REASON, create_budget
from bpo_ray.evaluate.config import EvaluateConfig, EvaluateFields
from bpo_ray.evaluate.judge_prompts import load_judge_prompt
from bpo_ray.evaluate.stage import OPTIMIZED_FIRST, ORIGINAL_FIRST, JudgeStage
from bpo_ray.evaluate.stats import summarize
from bpo_ray.runner import (
    REJECTED_TABLE,
    OnCluster,
    OutputTable,
    StagePlan,
    StageStep,
    run_stage,
)

JUDGMENTS_TABLE = "judgments"
ANSWER_FIELDS = ("original_response", "optimized_response")
JUDGMENT_COLUMNS = [
    "id", "key", "dataset", "target", "category", "order", "winner", "verdict",
    "p_optimized", "p_original", "p_tie", "repaired", "prompt", "context", "optimized_prompt", "optimizer",
    "original_response", "optimized_response", "judge_reply", "judge_setting",
    *(JudgeStage.usage_column(k) for k in ("model", "prompt_tokens", "completion_tokens", "requests",
                                           "retries", "latency_s")),
]


def evaluate_plan(cfg: EvaluateConfig) -> StagePlan:
    prompt = load_judge_prompt(cfg.judge_prompt)
    if cfg.verdict == "logprobs" and prompt.kind != "pairwise":
        raise ConfigError("verdict: logprobs reads [[A]]/[[B]]/[[C]] at the verdict token; use a pairwise judge prompt")
    kwargs: dict[str, Any] = {"judge_prompt": prompt.model_dump(), "verdict_mode": cfg.verdict, "repair": cfg.repair}
    if cfg.max_tokens:
        kwargs["budget"] = OnCluster(lambda: create_budget(cfg.max_tokens))
    reserved = tuple(JudgeStage.added_columns()) + ("order", "judge_setting", "target", "category", "optimizer")

    row_kwargs = dict(fields=cfg.fields.model_dump(), max_input_chars=cfg.max_input_chars, reserved=reserved)
    order_kwargs = dict(orders=cfg.orders, seed=cfg.seed)

    def read(salt: str):
        rows = read_rows(cfg.input, judged_pair_row, **row_kwargs)
        if cfg.limit:  # --limit counts pairs, not judgments
            rows = rows.limit(cfg.limit)
        return rows.flat_map(per_order, fn_kwargs={**order_kwargs, "salt": salt})

    def rows_of_record(record: dict, *, source: str, index: int, salt: str) -> list[dict]:
        row = judged_pair_row(record, source=source, index=index, **row_kwargs)
        return list(per_order(row, **order_kwargs, salt=salt))

    return StagePlan(
        config=cfg.model_copy(update={"limit": None}),  # applied to pairs in `read`
        steps=[StageStep(JudgeStage, cfg.judge, kwargs)],
        read=read,
        output_table=OutputTable(JUDGMENTS_TABLE, columns=JUDGMENT_COLUMNS),
        rejected_table=OutputTable(REJECTED_TABLE, exclude=("status",)),
        settings={"judge_prompt": prompt.model_dump(), "verdict": cfg.verdict, "repair": cfg.repair,
                  "max_input_chars": cfg.max_input_chars},
        counters={"judgments_repaired": "repaired"},
        rows_of_record=rows_of_record,
    )


def run_evaluate(cfg: EvaluateConfig, streamed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Judge every pair, then add the statistics (overall, by dataset, by target) and the
    budget and cost figures to the summary; returns it (also DIR/summary.json). `streamed`:
    see `run_stage`."""
    live = None
    if cfg.endpoint is not None:  # the served graph answers first; its answers are what is judged
        from bpo_ray.evaluate.live import live_answers_config, run_live_answers

        live = run_live_answers(cfg)
        cfg = cfg.model_copy(update={"input": [live_answers_config(cfg).output]})
    plan = evaluate_plan(cfg)
    summary = run_stage(plan, streamed)
    if live is not None:
        summary["live_answers"] = {k: live[k] for k in ("output", "rows_in", "rows_skipped", "rows_out",
                                                        "rows_rejected", "reject_reasons", "requests")}
    setting = plan.salt()
    judgments = read_table(cfg.output, JUDGMENTS_TABLE, cfg.output_format)
    if judgments is not None:
        judgments = judgments.filter(pc.equal(judgments.column("judge_setting"), setting))
    rows = judgments.to_pylist() if judgments is not None else []
    stats = summarize(rows, seed=cfg.seed)
    prompt = plan.settings["judge_prompt"]  # as evaluate_plan loaded it
    not_judged = summary["reject_reasons"].get(reason_label(BUDGET_REASON), 0)
    summary.update(
        judge=cfg.judge.display_name(),
        judge_prompt=f"{prompt['name']}@{prompt['version']}",
        optimizer=", ".join(sorted({r["optimizer"] for r in rows if r["optimizer"]})) or None,
        judge_setting=setting,
        orders=cfg.orders,
        verdict=cfg.verdict,
        judgments=judgments.num_rows if judgments is not None else 0,
        budget_reached=bool(cfg.max_tokens) and not_judged > 0,
        judgments_not_judged=not_judged,
        cost_usd=_cost(cfg, summary),
        **stats,
    )
    write_summary(cfg.output, summary)
    return summary


def _cost(cfg: EvaluateConfig, summary: dict[str, Any]) -> float | None:
    """This run's judge cost at the configured price (None without one)."""
    price = cfg.prices.get(cfg.judge.model)
    if price is None:
        return None
    return round(summary["prompt_tokens"] / 1e6 * price.prompt_per_1m
                 + summary["completion_tokens"] / 1e6 * price.completion_per_1m, 6)


def judged_pair_row(record: Any, *, source: str, index: int, fields: dict, max_input_chars: int,
                    reserved: tuple[str, ...]) -> dict:
    """A prompt row (see `normalize_prompt`) plus both answers, `target`, `category` and the
    optimized prompt when the file has one (kept for the report, never shown to the judge)."""
    names = EvaluateFields.model_validate(fields)
    row = normalize_prompt(record, source=source, index=index, fields=names, max_input_chars=max_input_chars,
                           reserved=reserved)
    record = record if isinstance(record, dict) else {}
    problems = []
    for column in ANSWER_FIELDS:
        found = first_field(record, getattr(names, column))
        value = found[1] if found else None
        row[column] = value if isinstance(value, str) else ""
        if not isinstance(value, str):
            what = "missing field" if value is None else f"{type(value).__name__} in field"
            problems.append(f"{what} {column} (looked for {', '.join(getattr(names, column))})")
    for column in ("target", "category"):
        found = first_field(record, getattr(names, column))
        row[column] = "" if found is None or found[1] is None else str(found[1])
    optimized = record.get("optimized_prompt")
    row["optimized_prompt"] = optimized if isinstance(optimized, str) else ""
    optimizer = record.get("optimize_model")  # optimize's usage column, carried by generate
    row["optimizer"] = optimizer if isinstance(optimizer, str) else ""
    size = sum(len(row[c]) for c in ("prompt", "context", *ANSWER_FIELDS))
    if not problems and size > max_input_chars:
        problems.append(f"input too long: {size} characters > max_input_chars {max_input_chars}")
    if problems and row["status"] == STATUS_OK:
        row.update(status=STATUS_REJECTED, reason=f"row {row['source']}: " + "; ".join(problems))
    return row


def per_order(row: dict, *, orders: str, seed: int, salt: str) -> Iterator[dict]:
    """The pair once per order it is judged in (both, or one seeded random order), each keyed by
    the question, both answers, the order and the judge setting (`salt`)."""
    content = [row["dataset"], row["target"], row["prompt"], row["context"],
               row["original_response"], row["optimized_response"]]
    if row["status"] != STATUS_OK:
        yield {**row, "order": "", "judge_setting": salt, "key": row_key([*content, row["source"]], salt)}
        return
    if orders == "both":
        chosen = [OPTIMIZED_FIRST, ORIGINAL_FIRST]
    else:  # seeded per pair: the same order whatever the partitioning or the run
        rng = random.Random(f"{seed}:{row['dataset']}:{row['target']}:{row['id']}")
        chosen = [rng.choice([OPTIMIZED_FIRST, ORIGINAL_FIRST])]
    for order in chosen:
        yield {**row, "order": order, "judge_setting": salt, "key": row_key([*content, order], salt)}
