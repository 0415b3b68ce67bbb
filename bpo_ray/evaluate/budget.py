"""The judge's token budget, shared by every judge actor of a job (one small Ray actor).

Actors ask before each block and report what the block spent; once the budget is gone, the
remaining rows are rejected as retryable with BUDGET_REASON, so the job ends in seconds and a
re-run with a larger budget judges exactly those rows. Blocks already in flight finish, so a
run may overshoot by at most those blocks' tokens.
"""

from __future__ import annotations

from typing import Any

BUDGET_REASON = "token budget reached"


class TokenBudget:
    def __init__(self, max_tokens: int):
        self._left = max_tokens

    def left(self) -> int:
        return self._left

    def spend(self, tokens: int) -> int:
        self._left -= tokens
        return self._left


def create_budget(max_tokens: int) -> Any:
    import ray

    # No CPU: it must never wait behind the judge actors it serves.
    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(TokenBudget).remote(max_tokens)
