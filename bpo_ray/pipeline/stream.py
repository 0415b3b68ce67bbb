"""Optimize -> generate -> evaluate as one Ray Data plan: the optimizer, every target and the
judge work at the same time, each on its own actor pool, and a row is judged while later rows
are still being rewritten.

The plan is the three stage jobs' own pieces (bpo_ray/runner.py): optimize's reader and
resume, each step's actor pool, each stage's tables and keys. After each stage's pools a small
task (`_hand_over`, no CPU reserved: the pools may hold them all) turns each finished row into
the record the stage's job writes, sends it to that stage's ledger (`StageLedger`, a small
actor on the driver's node that writes the stage's folder, flushed every few seconds as in
every job), and makes the next stage's rows from the record with the same function the next
job applies to each record of its input files: the rows and keys the jobs would make one after
another. A stage's work is saved when the stage finishes it, not when the row is judged: a
killed run re-pays what was in flight in each stage plus a few seconds.

What the stream does not finish, the stage jobs run after it do: a row rejected for a reason a
retry may fix, a record the next stage's reader rejects, the rows of an earlier run that
stopped between stages. They skip what the stream wrote, so a stage's summary counts both runs
and its output is what the stages run one after another would have written.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bpo_ray.data.ledger import TableWriter
from bpo_ray.data.rows import STATUS_OK, STATUS_REJECTED, count_reasons
from bpo_ray.models.resources import actor_resources, cluster_gpus
from bpo_ray.models.stage import USAGE_TOTALS
from bpo_ray.ray_utils import run_on_ray
from bpo_ray.runner import (
    OutputTable,
    StagePlan,
    check_models,
    model_keys,
    pending_rows,
    pool_size,
    start_pool,
)
from bpo_ray.terminal import RowProgress, console, job_log_file

STAGE_COLUMN = "_stream_stage"
"""The stage a row belongs to; rows an earlier stage ended pass on untouched."""


def run_streamed(plans: list[StagePlan], *, log_dir: str) -> dict[str, dict[str, Any]] | str:
    """Stream `plans` (each stage's rows from the one before) as one Ray Data plan. Returns
    what each stage did, by stage name (`StreamTally.summary`), or why the stages cannot
    stream on this cluster (then nothing ran)."""
    api_keys = [model_keys(plan) for plan in plans]
    with job_log_file(log_dir, "stream"):
        for plan, keys in zip(plans, api_keys):
            check_models(plan, keys)
        return run_on_ray(plans[0].config.ray_address, _run, plans, api_keys)


def _run(plans: list[StagePlan], api_keys: list[list[str | None]]) -> dict[str, dict[str, Any]] | str:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if (problem := _cannot_hold_all_pools(plans)) is not None:
        return problem
    started = time.monotonic()
    names = [plan.stage_names[0] for plan in plans]
    _, todo, _ = pending_rows(plans[0])
    if not todo.count():
        return {name: StreamTally(plan).summary(0.0) for name, plan in zip(names, plans)}
    console.print(f"     {' → '.join(names)} streamed as one Ray Data plan: "
                  f"{', '.join(_pools(plans))} at work at once", highlight=False)
    # On the driver's node: a local output folder is the driver's, as in every job.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledgers = [ray.remote(StageLedger).options(num_cpus=0, scheduling_strategy=here).remote(plan) for plan in plans]
    rows, blocks = todo, todo.num_blocks()
    for number, (plan, keys) in enumerate(zip(plans, api_keys)):
        for step, key in zip(plan.steps, keys):
            if plan.route_by:  # every target's pool sees every block and takes its own rows
                step = dataclasses.replace(step, kwargs={**step.kwargs, "route": (plan.route_by, step.name)})
            rows = start_pool(plan, step, rows, key, blocks)
        after = plans[number + 1] if number + 1 < len(plans) else None
        rows = rows.map_batches(
            _hand_over,
            fn_kwargs={"stage": names[number], "tables": (plan.output_table, plan.rejected_table),
                       "ledger": ledgers[number],
                       "next_stage": names[number + 1] if after else None,
                       "next_rows": after.rows_of_record if after else None,
                       "next_salt": after.salt() if after else None,
                       "next_required": _required_columns(after) if after else ()},
            batch_format="pyarrow", batch_size=None,
            num_cpus=0,  # light work, and the pools may hold every CPU: a task waiting for one would never run
        )
    try:
        with RowProgress(" → ".join(names), todo.count()) as progress:
            shown = [(0, 0, 0)] * len(plans)
            for _ in rows.iter_batches(batch_format="pyarrow", batch_size=None):
                now = ray.get([ledger.progress.remote() for ledger in ledgers])
                progress.advance(now[0][0] - shown[0][0], now[0][1] - shown[0][1],
                                 sum(n[2] for n in now) - sum(n[2] for n in shown))
                shown = now
    finally:
        done = ray.get([ledger.close.remote(time.monotonic() - started) for ledger in ledgers])
    return dict(zip(names, done))


class StageLedger:
    """One stage's ledger in a streamed run (a Ray actor): writes each of its records once (good
    ones to its output table; rejections a retry will not change to its rejected table) and
    counts them the way `run_stage` counts a job, for `run_stage(plan, streamed=...)`."""

    def __init__(self, plan: StagePlan):
        cfg = plan.config
        writers = dict(fmt=cfg.output_format, flush_s=cfg.flush_s)
        # No declared schema: the records carry their types (read_table unifies the parts).
        self.good = TableWriter(cfg.output, plan.output_table.name, **writers)
        self.bad = TableWriter(cfg.output, plan.rejected_table.name, **writers)
        self.tally = StreamTally(plan)

    def add(self, records: list[tuple[bool, dict]]) -> None:
        good, bad = self.tally.add(records)
        self.good.add(good)
        self.bad.add(bad)

    def progress(self) -> tuple[int, int, int]:
        """(records, of them not written as good, model requests) so far."""
        return self.tally.records, self.tally.records - self.tally.rows_out, self.tally.usage["requests"]

    def close(self, wall_s: float) -> dict[str, Any]:
        self.good.close()
        self.bad.close()
        return self.tally.summary(wall_s)


class StreamTally:
    """A stage's counts in a streamed run, record by record."""

    def __init__(self, plan: StagePlan):
        self.counter_columns = plan.counters
        self.usage_columns = {name: [stage.usage_column(name) for stage in dict.fromkeys(s.stage for s in plan.steps)]
                              for name in USAGE_TOTALS}
        self.usage = dict.fromkeys(USAGE_TOTALS, 0)
        self.counters = dict.fromkeys(plan.counters, 0)
        self.reasons: list[str] = []
        self.seen: set[str] = set()
        self.records = self.rows_out = self.rows_rejected = 0

    def add(self, records: list[tuple[bool, dict]]) -> tuple[list[dict], list[dict]]:
        """Count the records not seen yet (a retried task sends its block again); returns
        (good records, rejected records) to write."""
        good, bad = [], []
        for ok, record in records:
            if record["key"] in self.seen:
                continue
            self.seen.add(record["key"])
            self.records += 1
            for name, columns in self.usage_columns.items():  # paid, whatever became of the row
                self.usage[name] += sum(record.get(c) or 0 for c in columns)
            if ok:
                good.append(record)
            elif not record.get("retryable"):
                # A retryable rejection is not written: the stage's own job, right after the
                # stream, tries the row again and writes its outcome.
                bad.append(record)
        for name, column in self.counter_columns.items():
            self.counters[name] += sum(bool(r.get(column)) for r in good)
        self.reasons += [r.get("reason") or "" for r in bad]
        self.rows_out += len(good)
        self.rows_rejected += len(bad)
        return good, bad

    def summary(self, wall_s: float) -> dict[str, Any]:
        return {"rows_out": self.rows_out, "rows_rejected": self.rows_rejected, **self.usage,
                "counters": dict(self.counters), "reject_reasons": count_reasons(self.reasons),
                "wall_s": round(wall_s, 2)}


def _hand_over(block: pa.Table, *, stage: str, tables: tuple[OutputTable, OutputTable], ledger: Any,
               next_stage: str | None, next_rows: Any, next_salt: str | None,
               next_required: tuple[str, ...]) -> pa.Table:
    """After `stage`'s pools: each of its rows becomes the record its job writes, sent to the
    stage's ledger, and, when good, the next stage's rows made from that record. Rows an
    earlier stage ended, and rows the next stage's reader rejects (its own job writes those,
    with the reasons and keys its reader gives), pass on as rejected rows that no later pool
    touches. After the last stage only a row count goes on, to the driver."""
    import ray

    stage_of = block.column(STAGE_COLUMN).to_pylist() if STAGE_COLUMN in block.column_names else [None] * len(block)
    mine = [s in (None, stage) for s in stage_of]
    records = _records(block, mine, tables)
    ray.get(ledger.add.remote(list(records.values())))  # in the ledger before the rows go on
    if next_stage is None:
        return pa.table({"rows": [block.num_rows]})
    out: list[dict] = []
    for i in range(block.num_rows):
        if not mine[i]:
            out.append(_passing(block, i, stage_of[i]))
            continue
        ok, record = records[i]
        made = next_rows(record, source=stage, index=i, salt=next_salt) if ok else []
        if made and made[0]["status"] == STATUS_OK:
            out.extend({**row, STAGE_COLUMN: next_stage} for row in made)
        else:
            out.append(_passing(block, i, stage))
    table = _table(out)
    for name in next_required:  # a block of passing rows only still has what the next pools check for
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    return table


def _passing(block: pa.Table, i: int, stage: str) -> dict:
    return {"id": block.column("id")[i].as_py(), "key": block.column("key")[i].as_py(), "status": STATUS_REJECTED,
            "reason": f"ended at {stage}", "retryable": False, STAGE_COLUMN: stage}


def _records(block: pa.Table, mine: list[bool], tables: tuple[OutputTable, OutputTable]) -> dict[int, tuple]:
    """Row index -> (good?, the record the stage's job writes for it), for this stage's rows."""
    plain = block.drop_columns([STAGE_COLUMN]) if STAGE_COLUMN in block.column_names else block
    ok = pc.equal(plain.column("status"), STATUS_OK).to_pylist()
    index = pa.array(range(block.num_rows))
    found: dict[int, tuple] = {}
    for good, table in ((True, tables[0]), (False, tables[1])):
        picked = pc.filter(index, pa.array([m and o == good for m, o in zip(mine, ok)])).to_pylist()
        if not picked:
            continue
        for i, record in zip(picked, table.rows(plain.take(picked))):
            found[i] = (good, record)
    return found


def _table(rows: list[dict]) -> pa.Table:
    """Rows of several shapes (a stage's rows and rows passing through) as one table."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    return pa.Table.from_pylist([{name: row.get(name) for name in columns} for row in rows])


def _required_columns(plan: StagePlan) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for step in plan.steps for c in (*step.stage.required_columns, "status")))


def _pools(plans: list[StagePlan]) -> list[str]:
    pools = []
    for plan in plans:
        for step in plan.steps:
            actors = pool_size(step.spec, plan.config)
            name = f"{step.stage.stage_name} {step.name}" if plan.route_by else step.stage.stage_name
            pools.append(f"{actors} {name} actor{'s' if actors > 1 else ''}")
    return pools


def _cannot_hold_all_pools(plans: list[StagePlan]) -> str | None:
    """Why the cluster cannot run every stage's pool at once (streamed, they all start
    together), or None when it can."""
    import ray

    gpus = cluster_gpus()
    cpu = gpu = 0.0
    for plan in plans:
        for step in plan.steps:
            need = actor_resources(step.spec, cluster_gpus=gpus, num_cpus=plan.config.cpus_per_actor,
                                   num_gpus=plan.config.gpus_per_actor)
            actors = pool_size(step.spec, plan.config)
            cpu += need["num_cpus"] * actors
            gpu += need["num_gpus"] * actors
    have = ray.cluster_resources()
    if cpu <= have.get("CPU", 0) and gpu <= have.get("GPU", 0):
        return None
    return (f"their actors need {cpu:g} CPUs and {gpu:g} GPUs at once and the cluster has "
            f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs (cpus_per_actor lowers a stage's share)")
