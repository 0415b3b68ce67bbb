"""The construct job: feedback files -> (prompt, optimized prompt) pairs, on Ray Data.

Layout, top to bottom: read and validate the input (one task per file), drop rows the output
folder already holds, run a pool of ConstructStage actors (one backend each; HTTP actors share
one rate limiter), and stream rows into DIR/pairs and DIR/rejected as they finish.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.expressions import col
import pyarrow.compute as pc

from bpo_ray.construct.config import ConstructConfig
from bpo_ray.construct.prompts import PROMPT_VERSION
from bpo_ray.construct.stage import ConstructStage
from bpo_ray.data.feedback import read_feedback
from bpo_ray.data.ledger import TableWriter, filesystem_and_path, done_keys
from bpo_ray.errors import BpoRayError
from bpo_ray.models.ratelimit import create_shared_limiter
from bpo_ray.models.stage import STATUS_OK
from bpo_ray.ray_utils import ensure_ray, user_error_in

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["id", "key", "prompt", "context", "has_context", "optimized_prompt", "comparison", "model",
                "repaired", "prompt_tokens", "completion_tokens", "requests", "retries", "latency_s"]
REJECTED_COLUMNS = ["id", "key", "source", "instruction", "context", "has_context", "good_res", "bad_res",
                    "reason", "retryable", "raw_reply", "optimized_prompt", "model", "prompt_tokens",
                    "completion_tokens", "requests", "retries", "latency_s"]
USAGE = ["requests", "retries", "prompt_tokens", "completion_tokens"]


def run_construct(cfg: ConstructConfig) -> dict[str, Any]:
    """Run the job; returns (and writes to DIR/summary.json) the run's summary."""
    started = time.monotonic()
    if cfg.model.provider == "openai":
        cfg.model.api_key()  # a missing key fails here, before any cluster work
    ensure_ray(cfg.ray_address)
    try:
        summary = _run(cfg)
    except Exception as exc:
        if (user_error := user_error_in(exc)) is not None:
            raise user_error from None
        raise
    summary["wall_s"] = round(time.monotonic() - started, 2)
    summary["requests_per_s"] = round(summary["requests"] / summary["wall_s"], 2) if summary["wall_s"] else 0.0
    fs, base = filesystem_and_path(cfg.output)
    with fs.open_output_stream(f"{base.rstrip('/')}/summary.json") as out:
        out.write(json.dumps(summary, indent=2).encode())
    return summary


def _run(cfg: ConstructConfig) -> dict[str, Any]:
    spec = cfg.model
    http = spec.provider == "openai"

    rows = read_feedback(cfg.input, cfg.fields, max_input_chars=cfg.max_input_chars,
                         key_salt=f"{spec.fingerprint()}:{PROMPT_VERSION}")
    if cfg.limit:
        rows = rows.limit(cfg.limit)
    rows = rows.materialize()  # read once: counted here, processed below
    rows_in = rows.count()

    # Resume: rows already paired, or rejected for a reason a retry will not change.
    done = done_keys(cfg.output, cfg.output_format, {
        "pairs": None,
        "rejected": lambda t: t.filter(pc.invert(t.column("retryable"))),
    })
    todo = rows.filter(expr=col("key").not_in(sorted(done))) if done else rows
    # Files arrive as one block each; cut them into a few batches per block so every actor
    # of the pool gets work. Materialized before the pool starts: these CPU tasks must not
    # wait for CPUs the actors (or a model server on the same node) already hold.
    todo = todo.repartition(target_num_rows_per_block=spec.concurrency * 4).materialize()
    rows_skipped = rows_in - todo.count()

    num_actors = cfg.num_actors or (2 if http else 1)
    limiter = create_shared_limiter(spec.rate_limit.requests_per_s, spec.rate_limit.tokens_per_min) if http else None
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1 if spec.device == "cuda" else 0)
    results = todo.map_batches(
        ConstructStage,
        fn_constructor_args=(spec.model_dump(),),
        fn_constructor_kwargs={"length_filter": cfg.length_filter.model_dump(), "repair": cfg.repair,
                               "rate_limiter": limiter},
        batch_size=spec.concurrency,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cfg.cpus_per_actor if cfg.cpus_per_actor is not None else (0.25 if http else 1),
        num_gpus=gpus or None,
    )

    pairs = TableWriter(cfg.output, "pairs", cfg.output_format)
    rejected = TableWriter(cfg.output, "rejected", cfg.output_format)
    totals = dict.fromkeys(USAGE, 0)
    repaired = retryable = 0
    reasons: dict[str, int] = {}
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        ok = pc.equal(batch.column("status"), STATUS_OK)
        good, bad = batch.filter(ok), batch.filter(pc.invert(ok))
        pairs.add(good.rename_columns(["prompt" if c == "instruction" else c for c in good.column_names])
                  .select(PAIR_COLUMNS).to_pylist())
        rejected.add(bad.select(REJECTED_COLUMNS).to_pylist())
        for name in USAGE:
            totals[name] += pc.sum(batch.column(name)).as_py() or 0
        repaired += pc.sum(pc.cast(good.column("repaired"), pa.int64())).as_py() or 0
        retryable += pc.sum(pc.cast(bad.column("retryable"), pa.int64())).as_py() or 0
        for reason in bad.column("reason").to_pylist():
            label = reason.split(":")[0]
            reasons[label] = reasons.get(label, 0) + 1
    pairs.flush()
    rejected.flush()

    summary = {
        "output": cfg.output,
        "model": spec.display_name(),
        "rows_in": rows_in,
        "rows_skipped": rows_skipped,
        "rows_out": pairs.rows_written,
        "rows_rejected": rejected.rows_written,
        "rows_rejected_retryable": retryable,
        "rows_repaired": repaired,
        "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        **totals,
    }
    check_accounting(summary)
    return summary


def check_accounting(summary: dict[str, Any]) -> None:
    """Every input row is skipped, paired or rejected: the invariant the job owes its user."""
    accounted = summary["rows_skipped"] + summary["rows_out"] + summary["rows_rejected"]
    if accounted != summary["rows_in"]:
        raise BpoRayError(f"row accounting is off: {summary['rows_in']} in, {accounted} accounted for")
