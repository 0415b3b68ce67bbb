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

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bpo_ray.config import Paths
from bpo_ray.data.ledger import (
    OutputFormat,
    TableWriter,
    done_keys,
    settings_hash,
    write_summary,
)
from bpo_ray.data.rows import STATUS_OK, count_reasons
from bpo_ray.errors import BpoRayError, InputError
from bpo_ray.models import check_model
from bpo_ray.models.resources import actor_resources, cluster_gpus
from bpo_ray.models.spec import ModelSpec
from bpo_ray.models.stage import USAGE_TOTALS, ModelStage
from bpo_ray.ray_utils import run_on_ray
from bpo_ray.terminal import RowProgress, console, job_log_file

REJECTED_TABLE = "rejected"


class StageJobConfig(BaseModel):
    """Settings every model stage job shares; a stage's config adds its own."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: Paths = Field(..., min_length=1, description="Input files or folders (JSON, JSONL, Parquet; paths, URIs or bpo:NAME).")
    output: str = Field(..., description="Output folder; re-running into it resumes.")
    limit: int | None = Field(None, ge=1, description="Use only the first N input rows.")
    num_actors: int | None = Field(None, ge=1, description="Stage actors (default: 2 for HTTP models, 1 per local model).")
    cpus_per_actor: float | None = Field(None, ge=0, description="CPUs each actor reserves (default: 0.25 for HTTP, 1 for local).")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs each local-model actor reserves (default: 1 when the cluster has GPUs and model.device is auto or cuda).")
    output_format: OutputFormat = Field("parquet", description="parquet or jsonl.")
    flush_s: float = Field(5.0, gt=0, description="Seconds between ledger flushes: a killed job re-pays at most this much finished work.")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")


@dataclass
class OutputTable:
    """One table of the ledger: its folder name and columns (input names; `rename` maps a
    column to the name it gets in this table). No `columns`: every column but `exclude`, for
    stages that carry their input's own columns through."""

    name: str
    columns: list[str] | None = None
    rename: dict[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()

    def names(self, full: pa.Schema) -> list[str]:
        if self.columns is not None:
            return self.columns
        return [n for n in full.names if n not in self.exclude]

    def schema(self, full: pa.Schema) -> pa.Schema:
        return pa.schema([pa.field(self.rename.get(c, c), full.field(c).type) for c in self.names(full)])

    def rows(self, batch: pa.Table) -> list[dict]:
        names = self.names(batch.schema)
        return batch.select(names).rename_columns([self.rename.get(c, c) for c in names]).to_pylist()


@dataclass(frozen=True)
class OnCluster:
    """A stage constructor argument made once the job is on Ray, shared by every actor of the
    step (evaluate's token budget is a small actor that must exist before the pool starts)."""

    make: Callable[[], Any]


@dataclass
class StageStep:
    """One model stage of a job: its class, its model and its constructor arguments."""

    stage: type[ModelStage]
    spec: ModelSpec
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    """With `StagePlan.route_by`: the value of that column whose rows this step takes."""


@dataclass
class StagePlan:
    """What a stage supplies to the runner."""

    config: StageJobConfig
    steps: list[StageStep]
    """One step, or a chain (sft-rewrite: optimizer, then target), each step's rows the next's
    input; with `route_by`, a fan-out instead (generate: one step per target)."""
    read: Callable[[str], Any]
    """key salt -> Ray Dataset of rows with id, key (content hash + salt), status, reason."""
    output_table: OutputTable
    rejected_table: OutputTable
    settings: dict[str, Any] = field(default_factory=dict)
    """Everything besides the models that changes an output (prompt texts, filters, repair):
    hashed into every row's key, so changing any of it redoes the rows."""
    counters: dict[str, str] = field(default_factory=dict)
    """Extra summary counts: summary name -> boolean column summed over good rows."""
    route_by: str | None = None
    """Fan-out: each row goes to the step named by this column. The reader then keys each
    row with its own step's model (the salt covers only `settings`)."""
    rows_of_record: Callable[..., list[dict]] | None = None
    """(record, *, source, index, salt) -> this stage's rows for one record of the stage
    before: what `read` makes of each record of a file, for the streamed pipeline, which hands
    records over in memory (bpo_ray/pipeline/stream.py). Same rows, same keys."""

    @property
    def stage_names(self) -> list[str]:
        return list(dict.fromkeys(step.stage.stage_name for step in self.steps))

    def salt(self) -> str:
        if self.route_by:
            return settings_hash(*self.stage_names, self.settings)
        models = [part for s in self.steps for part in (s.stage.stage_name, s.spec.fingerprint())]
        return settings_hash(*models, self.settings)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        for stage in dict.fromkeys(step.stage for step in self.steps):
            input_schema = stage.output_schema(input_schema)
        return input_schema


def run_stage(plan: StagePlan, streamed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a stage job end to end; returns (and writes to DIR/summary.json) its summary.
    `streamed`: what a streamed pipeline run just did for this stage (`StreamTally`), counted
    in this summary; the rows it wrote are the rows this run skips."""
    started = time.monotonic()
    cfg = plan.config
    api_keys = model_keys(plan)
    with job_log_file(cfg.output, "-".join(plan.stage_names)) as log_file:
        check_models(plan, api_keys)
        summary = run_on_ray(cfg.ray_address, _run, plan, api_keys)
    if streamed:
        _count_streamed(summary, streamed)
    summary["log_file"] = log_file
    summary["wall_s"] = round(time.monotonic() - started + (streamed or {}).get("wall_s", 0), 2)
    wall = summary["wall_s"] or float("inf")
    summary["requests_per_s"] = round(summary["requests"] / wall, 2)
    summary["tokens"] = summary["prompt_tokens"] + summary["completion_tokens"]
    summary["tokens_per_s"] = round(summary["completion_tokens"] / wall, 2)  # generated tokens
    write_summary(cfg.output, summary)
    return summary


def model_keys(plan: StagePlan) -> list[str | None]:
    """Each step's API key (None for local models), from its environment variable: a missing
    key fails here, in seconds, before Ray starts."""
    return [step.spec.api_key() if step.spec.is_http else None for step in plan.steps]


def check_models(plan: StagePlan, api_keys: list[str | None]) -> None:
    """A missing model or a wrong URL or key fails here, before any actor loads anything."""
    for step, key in zip(plan.steps, api_keys):
        check_model(step.spec, api_key=key)


def _count_streamed(summary: dict[str, Any], streamed: dict[str, Any]) -> None:
    """Add a streamed run's rows and usage to this run's summary: rows it wrote are among this
    run's skipped rows, and move to written or rejected (its retryable rejections were retried
    by this run, which counts their outcome)."""
    summary["rows_skipped"] -= streamed["rows_out"] + streamed["rows_rejected"]
    summary["rows_streamed"] = streamed["rows_out"] + streamed["rows_rejected"]
    for name in ("rows_out", "rows_rejected", *USAGE_TOTALS):
        summary[name] += streamed[name]
    for name, count in streamed["counters"].items():
        summary[name] += count
    reasons = Counter(summary["reject_reasons"]) + Counter(streamed["reject_reasons"])
    summary["reject_reasons"] = dict(reasons.most_common())
    check_accounting(summary)


def _run(plan: StagePlan, api_keys: list[str | None]) -> dict[str, Any]:
    cfg = plan.config
    rows_in, todo, input_schema = pending_rows(plan)
    schema = plan.output_schema(input_schema)
    good_table, rejected_table = plan.output_table, plan.rejected_table
    tally = Tally(plan.steps, plan.counters)
    writers = dict(fmt=cfg.output_format, flush_s=cfg.flush_s)
    with TableWriter(cfg.output, good_table.name, schema=good_table.schema(schema), **writers) as good_out, \
            TableWriter(cfg.output, rejected_table.name, schema=rejected_table.schema(schema), **writers) as bad_out:
        if todo.count():
            if (short := resources_short(plan)) is not None:
                console.print(f"[yellow]{short}[/yellow]")
            for step in plan.steps:
                if step.spec.provider == "vllm" and not step.spec.vllm.enforce_eager:
                    # Otherwise the first minutes show no progress and look like a hang.
                    console.print(f"[dim]{step.spec.display_name()}: the vLLM engine compiles its graphs before the "
                                  "first row (a minute or more on CPU; model.vllm.enforce_eager: true skips it)[/dim]",
                                  highlight=False)
            with RowProgress("-".join(plan.stage_names), todo.count()) as progress:
                for block in _pipeline(plan, todo, api_keys).iter_batches(batch_format="pyarrow", batch_size=None):
                    ok = pc.equal(block.column("status"), STATUS_OK)
                    good, bad = block.filter(ok), block.filter(pc.invert(ok))
                    good_out.add(good_table.rows(good))
                    bad_out.add(rejected_table.rows(bad))
                    requests = tally.add(block, good, bad)
                    progress.advance(block.num_rows, bad.num_rows, requests)

    summary = {
        "output": cfg.output,
        "model": ", ".join(step.spec.display_name() for step in plan.steps),
        "rows_in": rows_in,
        "rows_skipped": rows_in - todo.count(),
        "rows_out": good_out.rows_written,
        "rows_rejected": bad_out.rows_written,
        **tally.summary(),
    }
    check_accounting(summary)
    return summary


def pending_rows(plan: StagePlan):
    """(rows in, the rows still to do, the input schema): read with every row keyed by its
    content and the stage's settings, minus the keys the output folder already holds."""
    from ray.data.expressions import col

    cfg = plan.config
    rows = plan.read(plan.salt())
    if cfg.limit:
        rows = rows.limit(cfg.limit)
    rows = rows.materialize()  # read once: counted here, processed below
    # Done: rows already written, or rejected for a reason a retry will not change.
    done = done_keys(cfg.output, cfg.output_format, {
        plan.output_table.name: None,
        plan.rejected_table.name: lambda t: t.filter(pc.invert(t.column("retryable"))),
    })
    todo = rows.filter(expr=col("key").not_in(sorted(done))) if done else rows
    # A block's rows reach the ledger when its last row is done, so small blocks keep what a
    # kill loses small (`_block_rows`). Materialized before the pool starts: these CPU tasks
    # must not wait for CPUs the actors (or a model server on the node) already hold.
    todo = todo.materialize()
    first = plan.steps[0].spec
    todo = todo.repartition(_block_count(todo.count(), _block_rows(first), pool_size(first, plan.config)))
    return rows.count(), todo.materialize(), _input_schema(rows)


def _block_count(rows: int, batch: int, actors: int) -> int:
    """Equal blocks of at most `batch` rows, as many as a multiple of the pool size where the
    rows allow: a short tail block would leave all actors but one idle at the end."""
    blocks = max(1, math.ceil(rows / batch))
    return max(1, min(rows, math.ceil(blocks / actors) * actors))


def _input_schema(rows) -> pa.Schema:
    """Every column of every input block: files of one job may carry different columns (a
    column missing from a file is null in its rows). A column whose type differs between files
    cannot be stored as one: a clear error instead of a failed write later."""
    per_block = rows.map_batches(_block_schema, batch_format="pyarrow", batch_size=None).take_all()
    schemas = [pa.ipc.read_schema(pa.py_buffer(r["schema"])) for r in per_block]
    try:
        return pa.unify_schemas(schemas, promote_options="permissive") if schemas else rows.schema().base_schema
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise InputError(f"input: a column has different types in different input files ({exc}); "
                         "convert it, or read the files in separate jobs") from None


def _block_schema(block: pa.Table) -> pa.Table:
    # A materialized dataset reports its first block's schema only; ask every block.
    return pa.table({"schema": [block.schema.serialize().to_pybytes()]})


def _pipeline(plan: StagePlan, todo, api_keys: list[str | None]):
    """The job's actor pools over `todo`: chained, or one branch per routed step."""
    from ray.data.expressions import col

    blocks = todo.num_blocks()  # materialized: no pool needs more actors than this
    if plan.route_by:
        # Each branch's rows are picked out before any pool starts: a filter task queued behind
        # actors that hold every CPU would never run.
        inputs = [todo.filter(expr=col(plan.route_by) == step.name).materialize() for step in plan.steps]
        branches = [start_pool(plan, step, rows, key, blocks)
                    for step, rows, key in zip(plan.steps, inputs, api_keys)]
        return branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]
    for step, key in zip(plan.steps, api_keys):
        todo = start_pool(plan, step, todo, key, blocks)
    return todo


def start_pool(plan: StagePlan, step: StageStep, rows, api_key: str | None, blocks: int):
    """One step's actor pool over `rows`: one backend per actor; HTTP actors share one rate
    limiter and get the key from the driver; local-model actors reserve their device."""
    from bpo_ray.models.ratelimit import create_shared_limiter

    spec, cfg = step.spec, plan.config
    limiter = create_shared_limiter(spec.rate_limit.requests_per_s, spec.rate_limit.tokens_per_min) \
        if spec.is_http else None
    return rows.map_batches(
        step.stage,
        fn_constructor_args=(spec.model_dump(),),
        fn_constructor_kwargs={
            **{name: value.make() if isinstance(value, OnCluster) else value for name, value in step.kwargs.items()},
            "rate_limiter": limiter,
            # Actors on other nodes may lack the variable; SecretStr keeps the key out of
            # reprs and logs, and it is never part of a runtime environment or job metadata.
            "api_key": SecretStr(api_key) if api_key else None,
        },
        batch_size=None,  # one block per call: blocks are cut to the batch size above
        batch_format="pyarrow",
        compute=_pool(spec, cfg, blocks=blocks),
        **actor_resources(spec, cluster_gpus=cluster_gpus(), num_cpus=cfg.cpus_per_actor,
                          num_gpus=cfg.gpus_per_actor),
    )


# An HTTP stage's blocks: a quarter of the concurrency, at most a quarter second's worth of the
# rate limit, at least 8 rows. A block's rows reach the ledger when its last row is done, and
# its rows are booked on the rate limiter together (so they are answered together): a kill
# re-pays the few blocks being answered, not every finished row of big blocks. Not smaller:
# Ray Data costs ~20 ms of CPU per block (actor and driver, measured with 8-row blocks), which
# at 8 rows a block and 200 requests/s would take a quarter of a 2-core machine.
HTTP_BLOCK_S = 0.25
ENGINE_BLOCKS_IN_FLIGHT = 4
HTTP_MIN_BLOCK_ROWS = 8


def _block_rows(spec: ModelSpec) -> int:
    """Rows per block: a local model's batch, or a few rows of HTTP requests."""
    if not spec.is_http:
        return spec.batch_size
    rows = math.ceil(spec.concurrency / 4)
    if spec.rate_limit.requests_per_s:
        rows = min(rows, math.ceil(spec.rate_limit.requests_per_s * HTTP_BLOCK_S))
    return min(spec.concurrency, max(HTTP_MIN_BLOCK_ROWS, rows))


class Tally:
    """The summary's counts, block by block: usage (over every stage of the job), the stage's
    counters, rejections."""

    def __init__(self, steps: list[StageStep], counters: dict[str, str]):
        self.stages = list(dict.fromkeys(step.stage for step in steps))
        self.counters = counters
        self.usage = dict.fromkeys(USAGE_TOTALS, 0)
        self.counts = dict.fromkeys(counters, 0)
        self.retryable = 0
        self.reasons: list[str] = []

    def add(self, block: pa.Table, good: pa.Table, bad: pa.Table) -> int:
        """Count one block; returns the model requests it took."""
        before = self.usage["requests"]
        for name in USAGE_TOTALS:
            self.usage[name] += sum(_sum(block.column(stage.usage_column(name))) for stage in self.stages)
        for name, column in self.counters.items():
            self.counts[name] += _sum(good.column(column))
        self.retryable += _sum(bad.column("retryable"))
        self.reasons += bad.column("reason").to_pylist()
        return self.usage["requests"] - before

    def summary(self) -> dict[str, Any]:
        return {"rows_rejected_retryable": self.retryable, **self.counts,
                "reject_reasons": count_reasons(self.reasons), **self.usage}


def _sum(column) -> int:
    return pc.sum(pc.cast(column, pa.int64())).as_py() or 0


def resources_short(plan: StagePlan) -> str | None:
    """What the cluster lacks right now for one actor of each of the plan's pools, said so a
    person knows why the job waits (Ray Data itself only warns when no CPU at all is free); None
    when they fit. Waiting is right on an autoscaling cluster, so this warns, it does not stop."""
    import ray

    cfg, gpus = plan.config, cluster_gpus()
    need = {"CPU": 0.0, "GPU": 0.0}
    for step in plan.steps:
        one = actor_resources(step.spec, cluster_gpus=gpus, num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor)
        need["CPU"] += one["num_cpus"]
        need["GPU"] += one["num_gpus"]
    free, total = ray.available_resources(), ray.cluster_resources()
    lacking = [r for r in need if need[r] > free.get(r, 0) + 1e-9]
    if not lacking:
        return None
    models = ", ".join(step.spec.display_name() for step in plan.steps)
    said = " and ".join(f"{need[r]:g} {r} ({free.get(r, 0):g} of {total.get(r, 0):g} free)" for r in lacking)
    why = ("more than the cluster has in all: it starts when the autoscaler adds a node"
           if any(need[r] > total.get(r, 0) for r in lacking) else
           "other work (Serve replicas, other jobs) holds the rest: it starts when that frees up or the "
           "autoscaler adds a node")
    return f"waiting for resources: one actor each for {models} needs {said}; {why} (cpus_per_actor / gpus_per_actor lower the need)."


def pool_size(spec: ModelSpec, cfg: StageJobConfig) -> int:
    return cfg.num_actors or (2 if spec.is_http else 1)


def _pool(spec: ModelSpec, cfg: StageJobConfig, *, blocks: int):
    import ray.data

    # No more actors than blocks: an actor with nothing to do still loads its model.
    size = max(1, min(pool_size(spec, cfg), blocks))
    if spec.is_http:
        # Enough blocks at once per actor to fill spec.concurrency, plus two: while a block's
        # slowest requests finish, the next blocks' rows already wait for the freed connection
        # slots (the backend caps requests in flight at spec.concurrency), so small blocks cost
        # no throughput.
        calls = math.ceil(spec.concurrency / _block_rows(spec)) + 2
        return ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=calls)
    if spec.continuous_batching:
        # The engine schedules sequences itself: a few blocks at once keep it full while one
        # block's longest replies finish (Ray's own vLLM stage does the same).
        return ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=ENGINE_BLOCKS_IN_FLIGHT)
    # A model computes one block at a time; a second block queued on a busy actor would wait
    # there while another actor sits idle.
    return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)


def check_accounting(summary: dict[str, Any]) -> None:
    """Every input row is skipped, written or rejected: the invariant the job owes its user."""
    accounted = summary["rows_skipped"] + summary["rows_out"] + summary["rows_rejected"]
    if accounted != summary["rows_in"]:
        raise BpoRayError(f"row accounting is off: {summary['rows_in']} in, {accounted} accounted for")
