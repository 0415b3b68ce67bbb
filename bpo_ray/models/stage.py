"""The Ray Data stage base class: one backend per actor, exactly one row out per row in.

Subclasses implement `process_rows` on plain dicts. The base class enforces the contract every
stage owes the job: required columns present, row ids carried through, rows that arrive already
rejected passed on untouched, every row with the same declared columns and types, and failures
sorted by whom they concern:
- the row (bad input, no usable reply, a filter): a rejected row, for good;
- the moment (a crash in the stage, a device error): a rejected row marked retryable, which the
  next run of the job tries again;
- the whole job (ModelUnavailableError and other BpoRayErrors: a missing model, a rejected key):
  raised, so the job stops instead of rejecting every row.
Use it with `map_batches(Stage, batch_format="pyarrow", ...)`; the async `__call__` lets Ray
Data keep several batches in flight per actor. With `route=(column, value)` the stage takes
only the rows whose column holds that value and passes the others on untouched: several pools
of one stage (generate's targets) then work one after another on the same streamed blocks.
"""

from __future__ import annotations

import abc
import gc
import logging
import os
from typing import Any, ClassVar

import pyarrow as pa

from bpo_ray.data.rows import STATUS_OK, STATUS_REJECTED
from bpo_ray.errors import BpoRayError
from bpo_ray.models import build_backend
from bpo_ray.models.base import ChatBackend, ChatResult
from bpo_ray.models.spec import ModelSpec

log = logging.getLogger(__name__)

Row = dict[str, Any]


# Columns every stage output has; `reason` is empty for good rows.
STATUS_COLUMNS: dict[str, Any] = {"status": STATUS_OK, "reason": "", "retryable": False}
# Per-stage accounting, stored as `<stage>_<name>` so a row that went through several stages
# (generate, then evaluate) keeps each stage's model and usage.
USAGE_COLUMNS: dict[str, Any] = {
    "model": "",
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "requests": 0,
    "retries": 0,
    "latency_s": 0.0,
}
USAGE_TOTALS = ("requests", "retries", "prompt_tokens", "completion_tokens")
_ARROW_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


class ModelStage(abc.ABC):
    stage_name: ClassVar[str]
    """The verb this stage belongs to; prefixes its usage columns."""
    required_columns: ClassVar[tuple[str, ...]] = ("id",)
    output_columns: ClassVar[dict[str, Any]] = {}
    """Columns the subclass adds, with the value a rejected row gets (its type is the column's)."""
    _warm = False  # set once a first batch is done

    def __init__(self, spec: dict | ModelSpec, *, rate_limiter: Any = None, backend: ChatBackend | None = None,
                 api_key: Any = None, route: tuple[str, str] | None = None):
        self.spec = ModelSpec.model_validate(spec)
        self.route = route
        self._rate_limiter = rate_limiter
        # A pydantic SecretStr from the driver: its repr never shows the key.
        self._api_key = api_key
        self._backend = backend  # injected in unit tests; built per actor otherwise

    @property
    def backend(self) -> ChatBackend:
        if self._backend is None:
            limiter = None
            if self._rate_limiter is not None:
                from bpo_ray.models.ratelimit import RemoteRateLimiter

                limiter = RemoteRateLimiter(self._rate_limiter)
            key = self._api_key.get_secret_value() if hasattr(self._api_key, "get_secret_value") else self._api_key
            self._backend = build_backend(self.spec, rate_limiter=limiter, api_key=key)
        return self._backend

    @abc.abstractmethod
    async def process_rows(self, rows: list[Row]) -> list[Row]:
        """Rows in, the same rows (same ids, same order) out, each good or rejected."""

    @classmethod
    def usage_column(cls, name: str) -> str:
        return f"{cls.stage_name}_{name}"

    @classmethod
    def added_columns(cls) -> dict[str, Any]:
        """Every column this stage writes, with its default."""
        return {**STATUS_COLUMNS, **{cls.usage_column(k): v for k, v in USAGE_COLUMNS.items()},
                **cls.output_columns}

    @classmethod
    def output_schema(cls, input_schema: pa.Schema) -> pa.Schema:
        """The declared schema of this stage's output: the input's columns, then its own."""
        added = {name: _ARROW_TYPES[type(default)] for name, default in cls.added_columns().items()}
        fields = [f for f in input_schema if f.name not in added]
        return pa.schema(fields + [pa.field(name, typ) for name, typ in added.items()])

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        missing = [c for c in self.required_columns if c not in batch.column_names]
        if missing:
            # A wiring bug, not bad data: fail loudly with the names.
            raise KeyError(f"{type(self).__name__} needs columns {missing}; got {batch.column_names}")
        todo = [r for r in rows if r.get("status", STATUS_OK) == STATUS_OK
                and (self.route is None or r.get(self.route[0]) == self.route[1])]
        try:
            done = await self.process_rows(todo) if todo else []
            if [r["id"] for r in done] != [r["id"] for r in todo]:
                raise RuntimeError("stage returned rows out of order or changed their count")
        except BpoRayError:
            raise  # the job's settings are wrong: stop the job, mark no row
        except Exception as exc:
            log.exception("%s failed on a batch of %d rows", type(self).__name__, len(todo))
            done = [self.reject(r, f"stage error: {type(exc).__name__}: {exc}", retryable=True) for r in todo]
        if self._backend is not None and any(d.get("retryable") for d in done):
            await self._exit_if_backend_dead()
        by_id = {id(r): d for r, d in zip(todo, done)}
        defaults = self.added_columns()
        out = [{**defaults, **by_id.get(id(r), r)} for r in rows]
        if not self._warm:
            self._warm = True
            _freeze_gc_in_actor()
        return pa.Table.from_pylist(out, schema=self.output_schema(batch.schema))

    async def _exit_if_backend_dead(self) -> None:
        """A backend that can answer nothing more (a vLLM engine whose core process died) would
        turn every later row into a retryable rejection. Inside a Ray actor, end the process
        instead: Ray Data restarts the actor (a fresh engine) and retries its blocks, so no row
        is rejected for it."""
        import ray

        try:
            await self.backend.check_health()
        except Exception:
            if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
                log.error("%s: the model backend died; exiting so that Ray restarts this actor", type(self).__name__,
                          exc_info=True)
                os._exit(1)
            raise

    def usage(self, *results: ChatResult) -> Row:
        """This stage's usage columns for one row's calls (a row may take a repair round)."""
        return {self.usage_column(k): v for k, v in usage_totals(*results).items()} | {
            self.usage_column("model"): self.backend.model_name}

    def reject(self, row: Row, reason: str, *, retryable: bool = False) -> Row:
        return {**row, "status": STATUS_REJECTED, "reason": reason, "retryable": retryable}


def _freeze_gc_in_actor() -> None:
    """In a Ray actor, after its first batch: leave everything loaded so far (Ray, pyarrow, the
    client library and its hundreds of models, a model's weights) out of every later garbage
    collection; it lives as long as the actor. Measured in an HTTP stage actor: a full
    collection took 100-200 ms every few seconds, and every request it paced went out late
    (at 200 requests/s: 95% of the limit reached, 97% with this)."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        gc.freeze()


def usage_totals(*results: ChatResult) -> Row:
    """Sum the accounting of one row's calls."""
    return {
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        # A local model call sends no HTTP request but is still one model call.
        "requests": sum(max(r.requests, 1) for r in results),
        "retries": sum(r.retries for r in results),
        "latency_s": round(sum(r.latency_s for r in results), 4),
    }
