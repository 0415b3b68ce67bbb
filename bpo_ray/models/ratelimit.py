"""Client-side rate limiting: requests/s and tokens/min, shared by every actor of a job.

The limiter only *schedules*: `reserve` returns the wall-clock time at which the caller may
send, so one implementation serves both a single process (`RateLimiter.acquire`) and a whole
Ray Data actor pool (`RateLimiterActor`, one actor that every stage actor asks). An absolute
time, not a delay, so the round trip to the actor does not shift (and bunch) requests.
The schedule is GCRA (a virtual-clock token bucket): requests are spaced evenly at the limit
instead of bursting, which is what keeps a strict server-side window from answering 429.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class _Gcra:
    rate: float  # units per second
    burst_s: float = 0.0  # how far ahead of schedule a caller may run
    tat: float = field(default=0.0)  # theoretical arrival time of the next unit

    def reserve(self, units: float, now: float) -> float:
        start = max(self.tat, now)
        self.tat = start + units / self.rate
        return max(0.0, start - self.burst_s - now)

    def settle(self, units: float) -> None:
        # Positive: the caller used more than it reserved; push the schedule back.
        self.tat += units / self.rate


# Schedule a hair under the limit: arrival jitter on the network would otherwise let a strict
# server-side window see one request too many now and then (measured: 1 in ~15 at 10 req/s).
HEADROOM = 0.98


class RateLimiter:
    def __init__(self, requests_per_s: float | None = None, tokens_per_min: float | None = None):
        self._requests = _Gcra(requests_per_s * HEADROOM) if requests_per_s else None
        # Token budgets are coarse (estimates settle later), so allow a 1 s burst.
        self._tokens = _Gcra(tokens_per_min / 60.0, burst_s=1.0) if tokens_per_min else None

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def reserve(self, tokens: int = 0) -> float:
        """Book one request of about `tokens` tokens; returns when (time.time()) to send it."""
        now = time.time()
        wait = 0.0
        if self._requests:
            wait = self._requests.reserve(1, now)
        if self._tokens and tokens:
            wait = max(wait, self._tokens.reserve(tokens, now))
        return now + wait

    def settle(self, token_error: int) -> None:
        """Correct a token estimate once the server reported real usage."""
        if self._tokens and token_error:
            self._tokens.settle(token_error)

    async def acquire(self, tokens: int = 0) -> None:
        await sleep_until(self.reserve(tokens))


async def sleep_until(when: float) -> None:
    wait = when - time.time()
    if wait > 0:
        await asyncio.sleep(wait)


class RateLimiterActor:
    """Ray actor wrapper: one limiter for every actor of a job (create with `ray.remote`).

    Callers sleep on their own side until the time it returns: one round trip per request.
    """

    def __init__(self, requests_per_s: float | None, tokens_per_min: float | None):
        self._limiter = RateLimiter(requests_per_s, tokens_per_min)

    def reserve(self, tokens: int = 0) -> float:
        return self._limiter.reserve(tokens)

    def settle(self, token_error: int) -> None:
        self._limiter.settle(token_error)


class RemoteRateLimiter:
    """The async `acquire`/`settle` face of a RateLimiterActor handle, for backends."""

    active = True

    def __init__(self, handle):
        self._handle = handle

    async def acquire(self, tokens: int = 0) -> None:
        await sleep_until(await self._handle.reserve.remote(tokens))

    def settle(self, token_error: int) -> None:
        if token_error:
            self._handle.settle.remote(token_error)


def create_shared_limiter(requests_per_s: float | None, tokens_per_min: float | None):
    """A RateLimiterActor for one job, or None when no limit is set."""
    if not requests_per_s and not tokens_per_min:
        return None
    import ray

    # No CPU reserved, so it never waits behind model actors; calls run one at a time
    # (each takes microseconds), which keeps the schedule free of races.
    actor_cls = ray.remote(num_cpus=0)(RateLimiterActor)
    return actor_cls.remote(requests_per_s, tokens_per_min)
