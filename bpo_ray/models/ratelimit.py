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
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


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


# How long one acquire waits on the limiter actor, retries and a restart included, before
# the process paces itself: a live actor answers in milliseconds, a restart in about a second.
REMOTE_WAIT_S = 5.0
_RETRY_PAUSE_S = 0.2


@dataclass(frozen=True)
class SharedLimiter:
    """A RateLimiterActor handle with the limits it was made with: what stage actors receive,
    so one that loses the actor can still pace itself (see RemoteRateLimiter)."""

    handle: Any
    requests_per_s: float | None
    tokens_per_min: float | None


class RemoteRateLimiter:
    """The async `acquire`/`settle` face of the shared limiter actor, for backends.

    The actor restarts when it dies (`create_shared_limiter`), and Ray retries calls across the
    restart. A call that still fails is retried for up to REMOTE_WAIT_S; after that the actor
    counts as gone and this process paces itself with a local RateLimiter, so a dead limiter
    slows a job down instead of turning whole batches into rejected rows.
    """

    active = True

    def __init__(self, shared: SharedLimiter):
        self._shared = shared
        self._local: RateLimiter | None = None

    async def acquire(self, tokens: int = 0) -> None:
        if self._local is None:
            when = await self._reserve_remote(tokens)
            if when is not None:
                await sleep_until(when)
                return
        await self._local.acquire(tokens)

    def settle(self, token_error: int) -> None:
        """Never raises: a lost correction only shifts the token schedule a little."""
        if not token_error:
            return
        if self._local is not None:
            self._local.settle(token_error)
            return
        try:
            self._shared.handle.settle.remote(token_error)
        except Exception:  # noqa: BLE001 - the actor's state is acquire's business
            pass

    async def _reserve_remote(self, tokens: int) -> float | None:
        """The actor's send time, or None once it is gone (then self._local is set)."""
        import ray.exceptions

        deadline = time.monotonic() + REMOTE_WAIT_S
        while self._local is None:
            left = deadline - time.monotonic()
            try:
                return await asyncio.wait_for(self._shared.handle.reserve.remote(tokens), left)
            except ray.exceptions.ActorDiedError as exc:
                self._fall_back(exc)  # restarts exhausted or killed for good: no use waiting
            except (ray.exceptions.RayError, asyncio.TimeoutError) as exc:
                if time.monotonic() + _RETRY_PAUSE_S >= deadline:
                    self._fall_back(exc)
                else:
                    await asyncio.sleep(_RETRY_PAUSE_S)
        return None

    def _fall_back(self, exc: BaseException) -> None:
        if self._local is not None:
            return  # another request of this process got there first
        # The same limits, not a share of them: this process cannot know how many others lost
        # the actor too (the pool autoscales), and a guessed share could starve it for the rest
        # of the job. Together they may overshoot the limit; the backend's 429 retries absorb that.
        self._local = RateLimiter(self._shared.requests_per_s, self._shared.tokens_per_min)
        log.warning("The shared rate limiter is unavailable (%s); this process paces its own requests "
                    "at %s from now on.", type(exc).__name__, _describe(self._shared))


def _describe(shared: SharedLimiter) -> str:
    parts = [f"{shared.requests_per_s:g} requests/s" if shared.requests_per_s else "",
             f"{shared.tokens_per_min:g} tokens/min" if shared.tokens_per_min else ""]
    return " and ".join(p for p in parts if p)


def create_shared_limiter(requests_per_s: float | None, tokens_per_min: float | None) -> SharedLimiter | None:
    """A RateLimiterActor for one job (with its limits, for RemoteRateLimiter), or None when
    no limit is set."""
    if not requests_per_s and not tokens_per_min:
        return None
    import ray

    # No CPU reserved, so it never waits behind model actors; calls run one at a time
    # (each takes microseconds), which keeps the schedule free of races. If it dies, Ray
    # restarts it and retries the calls in flight; the new one starts a fresh schedule, which
    # at worst overlaps the send times the old one had booked.
    actor_cls = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(RateLimiterActor)
    return SharedLimiter(actor_cls.remote(requests_per_s, tokens_per_min), requests_per_s, tokens_per_min)
