"""The Ray Data stage base class: one backend per actor, exactly one row out per row in.

Subclasses implement `process_rows` on plain dicts. The base class enforces the contract every
stage owes the job: required columns present, row ids carried through, rows that arrive already
rejected passed on untouched, and a failure anywhere turned into rejected rows with the reason,
never into a lost batch. Use it with `map_batches(Stage, batch_format="pyarrow", ...)`; the
async `__call__` lets Ray Data keep several batches in flight per actor.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar

import pyarrow as pa

from bpo_ray.models import build_backend
from bpo_ray.models.base import ChatBackend, ChatResult
from bpo_ray.models.spec import ModelSpec

log = logging.getLogger(__name__)

Row = dict[str, Any]

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"

# Columns every stage output has; `reason` is empty for good rows.
ACCOUNTING_COLUMNS: dict[str, Any] = {
    "status": STATUS_OK,
    "reason": "",
    "retryable": False,
    "model": "",
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "requests": 0,
    "retries": 0,
    "latency_s": 0.0,
}


class ModelStage(abc.ABC):
    required_columns: ClassVar[tuple[str, ...]] = ("id",)
    output_columns: ClassVar[dict[str, Any]] = {}
    """Columns the subclass adds, with the value a rejected row gets."""

    def __init__(self, spec: dict | ModelSpec, *, rate_limiter: Any = None, backend: ChatBackend | None = None):
        self.spec = ModelSpec.model_validate(spec)
        self._rate_limiter = rate_limiter
        self._backend = backend  # injected in unit tests; built per actor otherwise

    @property
    def backend(self) -> ChatBackend:
        if self._backend is None:
            limiter = None
            if self._rate_limiter is not None:
                from bpo_ray.models.ratelimit import RemoteRateLimiter

                limiter = RemoteRateLimiter(self._rate_limiter)
            self._backend = build_backend(self.spec, rate_limiter=limiter)
        return self._backend

    @abc.abstractmethod
    async def process_rows(self, rows: list[Row]) -> list[Row]:
        """Rows in, the same rows (same ids, same order) out, each good or rejected."""

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        missing = [c for c in self.required_columns if c not in batch.column_names]
        if missing:
            # A wiring bug, not bad data: fail loudly with the names.
            raise KeyError(f"{type(self).__name__} needs columns {missing}; got {batch.column_names}")
        todo = [r for r in rows if r.get("status", STATUS_OK) == STATUS_OK]
        try:
            done = await self.process_rows(todo) if todo else []
            if [r["id"] for r in done] != [r["id"] for r in todo]:
                raise RuntimeError("stage returned rows out of order or changed their count")
        except Exception as exc:
            log.exception("%s failed on a batch of %d rows", type(self).__name__, len(todo))
            done = [self.reject(r, f"stage error: {type(exc).__name__}: {exc}") for r in todo]
        by_id = {id(r): d for r, d in zip(todo, done)}
        out = [self._complete(by_id.get(id(r), r)) for r in rows]
        return pa.Table.from_pylist(out)

    def _complete(self, row: Row) -> Row:
        # Same columns in every row, so batches concatenate and write without schema drift.
        return {**ACCOUNTING_COLUMNS, **self.output_columns, **row}

    def reject(self, row: Row, reason: str, *, retryable: bool = False, usage: ChatResult | None = None) -> Row:
        out = {**row, "status": STATUS_REJECTED, "reason": reason, "retryable": retryable}
        if usage is not None:
            out.update(usage_columns(usage))
        return out


def usage_columns(*results: ChatResult) -> Row:
    """Sum the accounting of one row's calls (a row may take a repair round)."""
    return {
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
        # A local model call sends no HTTP request but is still one model call.
        "requests": sum(max(r.requests, 1) for r in results),
        "retries": sum(r.retries for r in results),
        "latency_s": round(sum(r.latency_s for r in results), 4),
    }
