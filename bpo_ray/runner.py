"""The one stage runner: every model stage (construct now; optimize, generate, evaluate next)
runs through `run_stage`, so reading, resuming, the actor pool, the ledger and the row
accounting are written once.

The layout it creates, top to bottom: check the model once (seconds, before any actor), read
the input (the stage's reader, one task per file), drop the rows the output folder already
holds, one pool of stage actors (one backend each; HTTP actors share one rate limiter and get
the API key from the driver), then stream every row into DIR/<good table> or DIR/rejected as
blocks finish, and DIR/summary.json with `rows_in = rows_skipped + rows_out + rows_rejected`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from bpo_ray.data.ledger import OutputFormat, TableWriter, done_keys, settings_hash, write_summary
from bpo_ray.data.rows import STATUS_OK, count_reasons
from bpo_ray.errors import BpoRayError
from bpo_ray.models import check_model
from bpo_ray.models.resources import actor_resources, cluster_gpus
from bpo_ray.models.spec import ModelSpec
from bpo_ray.models.stage import USAGE_TOTALS, ModelStage
from bpo_ray.ray_utils import run_on_ray
from bpo_ray.terminal import RowProgress, job_log_file

REJECTED_TABLE = "rejected"


class StageJobConfig(BaseModel):
    """Settings every model stage job shares; a stage's config adds its own."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: list[str] = Field(..., min_length=1, description="Input files or folders (JSON, JSONL, Parquet; paths, URIs or bpo:NAME).")
    output: str = Field(..., description="Output folder; re-running into it resumes.")
    limit: int | None = Field(None, ge=1, description="Use only the first N input rows.")
    num_actors: int | None = Field(None, ge=1, description="Stage actors (default: 2 for HTTP models, 1 per local model).")
    cpus_per_actor: float | None = Field(None, ge=0, description="CPUs each actor reserves (default: 0.25 for HTTP, 1 for local).")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs each local-model actor reserves (default: 1 when the cluster has GPUs and model.device is auto or cuda).")
    output_format: OutputFormat = Field("parquet", description="parquet or jsonl.")
    flush_s: float = Field(5.0, gt=0, description="Seconds between ledger flushes: a killed job re-pays at most this much finished work.")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value


@dataclass
class OutputTable:
    """One table of the ledger: its folder name and columns (input names; `rename` maps a
    column to the name it gets in this table)."""

    name: str
    columns: list[str]
    rename: dict[str, str] = field(default_factory=dict)

    def schema(self, full: pa.Schema) -> pa.Schema:
        return pa.schema([pa.field(self.rename.get(c, c), full.field(c).type) for c in self.columns])

    def rows(self, batch: pa.Table) -> list[dict]:
        picked = batch.select(self.columns)
        return picked.rename_columns([self.rename.get(c, c) for c in self.columns]).to_pylist()


@dataclass
class StagePlan:
    """What a stage supplies to the runner."""

    config: StageJobConfig
    spec: ModelSpec
    stage: type[ModelStage]
    read: Callable[[str], Any]
    """key salt -> Ray Dataset of rows with id, key (content hash + salt), status, reason."""
    output_table: OutputTable
    rejected_columns: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    """Everything besides the model that changes an output (prompt texts, filters, repair):
    hashed into every row's key, so changing any of it redoes the rows."""
    stage_kwargs: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, str] = field(default_factory=dict)
    """Extra summary counts: summary name -> boolean column summed over good rows."""


def run_stage(plan: StagePlan) -> dict[str, Any]:
    """Run a stage job end to end; returns (and writes to DIR/summary.json) its summary."""
    started = time.monotonic()
    spec, cfg = plan.spec, plan.config
    api_key = spec.api_key() if spec.is_http else None  # a missing key fails here
    with job_log_file(cfg.output, plan.stage.stage_name) as log_file:
        check_model(spec, api_key=api_key)  # a bad model, key or URL fails here, in seconds
        summary = run_on_ray(cfg.ray_address, _run, plan, api_key)
    summary["log_file"] = log_file
    summary["wall_s"] = round(time.monotonic() - started, 2)
    summary["requests_per_s"] = round(summary["requests"] / summary["wall_s"], 2) if summary["wall_s"] else 0.0
    write_summary(cfg.output, summary)
    return summary


def _run(plan: StagePlan, api_key: str | None) -> dict[str, Any]:
    spec, cfg, stage = plan.spec, plan.config, plan.stage
    rows_in, todo, input_schema = _pending_rows(plan)
    schema = stage.output_schema(input_schema)
    good_table, rejected_table = plan.output_table, OutputTable(REJECTED_TABLE, plan.rejected_columns)
    tally = _Tally(stage, plan.counters)
    writers = dict(fmt=cfg.output_format, flush_s=cfg.flush_s)
    with TableWriter(cfg.output, good_table.name, schema=good_table.schema(schema), **writers) as good_out, \
            TableWriter(cfg.output, REJECTED_TABLE, schema=rejected_table.schema(schema), **writers) as bad_out:
        if todo.count():
            with RowProgress(stage.stage_name, todo.count()) as progress:
                for block in _start_pool(plan, todo, api_key).iter_batches(batch_format="pyarrow", batch_size=None):
                    ok = pc.equal(block.column("status"), STATUS_OK)
                    good, bad = block.filter(ok), block.filter(pc.invert(ok))
                    good_out.add(good_table.rows(good))
                    bad_out.add(rejected_table.rows(bad))
                    tally.add(block, good, bad)
                    progress.advance(block.num_rows, bad.num_rows, _sum(block.column(stage.usage_column("requests"))))

    summary = {
        "output": cfg.output,
        "model": spec.display_name(),
        "rows_in": rows_in,
        "rows_skipped": rows_in - todo.count(),
        "rows_out": good_out.rows_written,
        "rows_rejected": bad_out.rows_written,
        **tally.summary(),
    }
    check_accounting(summary)
    return summary


def _pending_rows(plan: StagePlan):
    """(rows in, the rows still to do, the input schema): read with every row keyed by its
    content and the stage's settings, minus the keys the output folder already holds."""
    from ray.data.expressions import col

    spec, cfg = plan.spec, plan.config
    rows = plan.read(settings_hash(plan.stage.stage_name, spec.fingerprint(), plan.settings))
    if cfg.limit:
        rows = rows.limit(cfg.limit)
    rows = rows.materialize()  # read once: counted here, processed below
    # Done: rows already written, or rejected for a reason a retry will not change.
    done = done_keys(cfg.output, cfg.output_format, {
        plan.output_table.name: None,
        REJECTED_TABLE: lambda t: t.filter(pc.invert(t.column("retryable"))),
    })
    todo = rows.filter(expr=col("key").not_in(sorted(done))) if done else rows
    # One batch per block: a block's rows reach the ledger when its last row is done, so small
    # blocks keep what a kill loses small. Materialized before the pool starts: these CPU
    # tasks must not wait for CPUs the actors (or a model server on the node) already hold.
    todo = todo.repartition(target_num_rows_per_block=_batch_size(spec)).materialize()
    return rows.count(), todo, rows.schema().base_schema


def _start_pool(plan: StagePlan, todo, api_key: str | None):
    """The stage's actor pool over `todo`: one backend per actor; HTTP actors share one rate
    limiter and get the key from the driver; local-model actors reserve their device."""
    from bpo_ray.models.ratelimit import create_shared_limiter

    spec, cfg = plan.spec, plan.config
    limiter = create_shared_limiter(spec.rate_limit.requests_per_s, spec.rate_limit.tokens_per_min) \
        if spec.is_http else None
    return todo.map_batches(
        plan.stage,
        fn_constructor_args=(spec.model_dump(),),
        fn_constructor_kwargs={
            **plan.stage_kwargs,
            "rate_limiter": limiter,
            # Actors on other nodes may lack the variable; SecretStr keeps the key out of
            # reprs and logs, and it is never part of a runtime environment or job metadata.
            "api_key": SecretStr(api_key) if api_key else None,
        },
        batch_size=_batch_size(spec),
        batch_format="pyarrow",
        compute=_pool(spec, cfg, blocks=todo.num_blocks()),
        **actor_resources(spec, cluster_gpus=cluster_gpus(), num_cpus=cfg.cpus_per_actor,
                          num_gpus=cfg.gpus_per_actor),
    )


def _batch_size(spec: ModelSpec) -> int:
    return spec.concurrency if spec.is_http else spec.batch_size


class _Tally:
    """The summary's counts, block by block: usage, the stage's counters, rejections."""

    def __init__(self, stage: type[ModelStage], counters: dict[str, str]):
        self.stage, self.counters = stage, counters
        self.usage = dict.fromkeys(USAGE_TOTALS, 0)
        self.counts = dict.fromkeys(counters, 0)
        self.retryable = 0
        self.reasons: list[str] = []

    def add(self, block: pa.Table, good: pa.Table, bad: pa.Table) -> None:
        for name in USAGE_TOTALS:
            self.usage[name] += _sum(block.column(self.stage.usage_column(name)))
        for name, column in self.counters.items():
            self.counts[name] += _sum(good.column(column))
        self.retryable += _sum(bad.column("retryable"))
        self.reasons += bad.column("reason").to_pylist()

    def summary(self) -> dict[str, Any]:
        return {"rows_rejected_retryable": self.retryable, **self.counts,
                "reject_reasons": count_reasons(self.reasons), **self.usage}


def _sum(column) -> int:
    return pc.sum(pc.cast(column, pa.int64())).as_py() or 0


def _pool(spec: ModelSpec, cfg: StageJobConfig, *, blocks: int):
    import ray.data

    # No more actors than blocks: an actor with nothing to do still loads its model.
    size = max(1, min(cfg.num_actors or (2 if spec.is_http else 1), blocks))
    if spec.is_http:
        # Two blocks at once per actor: while one block's slowest requests finish, the next
        # block's rows already wait for the freed connection slots (the backend caps requests
        # in flight at spec.concurrency), so small blocks cost no throughput.
        return ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=2)
    return ray.data.ActorPoolStrategy(size=size)


def check_accounting(summary: dict[str, Any]) -> None:
    """Every input row is skipped, written or rejected: the invariant the job owes its user."""
    accounted = summary["rows_skipped"] + summary["rows_out"] + summary["rows_rejected"]
    if accounted != summary["rows_in"]:
        raise BpoRayError(f"row accounting is off: {summary['rows_in']} in, {accounted} accounted for")
