"""`bpo-ray pipeline`: construct -> train -> optimize -> generate -> evaluate -> report, each
stage the same job its own verb runs, with its output under one run folder.

Re-running the same config resumes: every model stage skips the rows its output already holds
(a finished stage costs a read of its input), and training is skipped when the optimizer
folder holds a finished model and construct added no pairs in this run. The terminal shows one
header per stage, the stage's own progress line, and one line of its summary; the libraries'
INFO logs go to DIR/<stage>/logs/.

Optimize -> generate -> evaluate stream as one Ray Data plan (bpo_ray/pipeline/stream.py) where
the cluster can hold all their actors at once; each stage's own job then runs for what the
stream left (retries, rows an earlier run stopped between stages) and writes the summary that
counts both.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bpo_ray.data.ledger import write_summary
from bpo_ray.pipeline.config import STAGES, PipelineConfig
from bpo_ray.terminal import console

STREAMED = ("optimize", "generate", "evaluate")


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    configs = cfg.stage_configs()  # every section checked before the first stage starts
    started = time.monotonic()
    stages = [s for s in STAGES if s in configs]
    results: dict[str, Any] = {}
    streamed: dict[str, dict[str, Any]] = {}
    for number, stage in enumerate(stages, 1):
        stage_cfg = configs[stage]
        console.print(f"[bold]{number}/{len(stages)} {stage}[/] → {stage_cfg.output}", highlight=False)
        begun = time.monotonic()
        if stage == STREAMED[0]:
            streamed = _stream(cfg, configs)
        summary = _run(stage, stage_cfg, results, streamed.get(stage))
        summary["stage_wall_s"] = round(time.monotonic() - begun, 1)
        results[stage] = summary
        console.print(f"     {_one_line(stage, summary)}", highlight=False, soft_wrap=True)
    out = {"output": cfg.output, "wall_s": round(time.monotonic() - started, 1),
           "stages": {stage: _brief(stage, s) for stage, s in results.items()}}
    write_summary(cfg.output, out)
    if report := results.get("report"):
        _show_report(report)
    out["report"] = report
    return out


def _show_report(report: dict[str, Any]) -> None:
    from bpo_ray.report.report import print_table

    print(print_table(report), end="")  # stdout: the run's result (progress goes to stderr)
    console.print(f"report: {report['report_md']}\nchart:  {report['chart_png']}", highlight=False)


def _stream(cfg: PipelineConfig, configs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Optimize -> generate -> evaluate as one Ray Data plan, where they can stream; what each
    stage did, which its own job (run right after, for what the stream left) counts in."""
    if (why := _why_not_streamed(cfg, configs)) is not None:
        console.print(f"     {' → '.join(STREAMED)} run one after another: {why}", highlight=False)
        return {}
    from bpo_ray.evaluate.job import evaluate_plan
    from bpo_ray.generate.job import generate_plan
    from bpo_ray.optimize.job import optimize_plan
    from bpo_ray.pipeline.stream import run_streamed

    plans = [optimize_plan(configs["optimize"]), generate_plan(configs["generate"]), evaluate_plan(configs["evaluate"])]
    done = run_streamed(plans, log_dir=cfg.output)
    if isinstance(done, str):
        console.print(f"     {' → '.join(STREAMED)} run one after another: {done}", highlight=False)
        return {}
    return done


def _why_not_streamed(cfg: PipelineConfig, configs: dict[str, Any]) -> str | None:
    if not cfg.stream:
        return "stream: false"
    if configs["generate"].input != [cfg.folder("optimize")] or configs["evaluate"].input != [cfg.folder("generate")]:
        return "generate.input or evaluate.input names other files than the stage before's output"
    if configs["generate"].limit or configs["evaluate"].limit:
        return "generate.limit and evaluate.limit count their own input rows; set optimize.limit instead"
    if configs["evaluate"].max_tokens:
        return "evaluate.max_tokens: a token budget is spent by one evaluate job"
    return None


def _run(stage: str, cfg: Any, done: dict[str, Any], streamed: dict[str, Any] | None = None) -> dict[str, Any]:
    if stage == "construct":
        from bpo_ray.construct.job import run_construct
        return run_construct(cfg)
    if stage == "train":
        if (previous := _finished_training(cfg.output)) is not None and not done.get("construct", {}).get("rows_out"):
            return {**previous, "skipped": "finished model in the output folder and no new pairs"}
        from bpo_ray.train.job import run_train
        return run_train(cfg)
    if stage == "optimize":
        from bpo_ray.optimize.job import run_optimize
        return run_optimize(cfg, streamed)
    if stage == "generate":
        from bpo_ray.generate.job import run_generate
        return run_generate(cfg, streamed)
    if stage == "evaluate":
        from bpo_ray.evaluate.job import run_evaluate
        return run_evaluate(cfg, streamed)
    from bpo_ray.report.report import run_report
    return run_report(cfg)


def _finished_training(output: str) -> dict[str, Any] | None:
    """The summary of a finished model in `output` (a path or a URI), or None."""
    import pyarrow.fs as pafs

    from bpo_ray.data.ledger import filesystem_and_path

    fs, base = filesystem_and_path(output)
    base = base.rstrip("/")
    try:
        with fs.open_input_stream(f"{base}/summary.json") as stream:
            summary = json.loads(stream.read())
        has_model = fs.get_file_info(f"{base}/config.json").type == pafs.FileType.File
    except (OSError, ValueError):  # no summary yet, or a half-written one
        return None
    return summary if summary.get("finished") and has_model else None


def _one_line(stage: str, s: dict[str, Any]) -> str:
    """A stage's summary in one line a person can read."""
    if stage == "train":
        if "skipped" in s:
            return f"skipped: {s['skipped']}"
        return (f"{s.get('rows_train', 0)} train / {s.get('rows_val', 0)} validation rows · loss "
                f"{_num(s.get('loss_first'))} → {_num(s.get('loss'))} · val loss {_num(s.get('val_loss'))} · "
                f"{s['stage_wall_s']} s")
    if stage == "report":
        return f"report {s['report_md']} · chart {s['chart_png']}"
    line = (f"{s['rows_in']} rows in · {s['rows_skipped']} already done · {s['rows_out']} out · "
            f"{s['rows_rejected']} rejected · {s['requests']} model calls · {s['stage_wall_s']} s")
    if s.get("rows_streamed"):
        line += f" · {s['rows_streamed']} rows in the stream"
    if s["rows_rejected"]:
        line += f" · reasons {json.dumps(s['reject_reasons'])}"
    if stage == "evaluate" and s.get("overall"):
        o = s["overall"]
        line += f"\n     win {o['win']} · tie {o['tie']} · lose {o['lose']} · unparsed {o['unparsed']} pairs"
    return line


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _brief(stage: str, s: dict[str, Any]) -> dict[str, Any]:
    keys = ("rows_in", "rows_skipped", "rows_streamed", "rows_out", "rows_rejected", "requests", "tokens", "skipped", "finished",
            "loss", "val_loss", "overall", "report_md", "chart_png", "stage_wall_s", "log_file")
    return {k: s[k] for k in keys if k in s}
