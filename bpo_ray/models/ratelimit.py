"""Client-side rate limiting: requests/s and tokens/min, shared by every actor of a job.

The limiter only *schedules*: `reserve` returns the wall-clock time at which the caller may
send, so one implementation serves both a single process (`RateLimiter.acquire`) and a whole
Ray Data actor pool (`RateLimiterActor`, one actor that every stage actor asks). An absolute
time, not a delay, so the round trip to the actor does not shift (and bunch) requests. A stage
actor books the send times of all its waiting requests in one call, and calls again only when
those are nearly used up: a few calls a second instead of one per request.
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
# A request that wakes later than this after its send time is booked again instead of sent: a
# process that stalled (a busy CPU) would otherwise send all its overdue requests at once, on
# top of everyone's punctual ones, and a strict 1 s window at the limit answers the excess 429.
# The headroom leaves room for this much lateness (20 ms: 4 requests at 200/s). A request is
# booked again at most twice, so a machine too busy to ever wake on time still sends.
LATE_S = 1.0 / HEADROOM - 1.0
REBOOKS = 2


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
        for _ in range(REBOOKS):
            if await sleep_until(self.reserve(tokens)) or not self._requests:
                return
            self.settle(-tokens)  # booked again: give back the tokens of the missed turn
        await sleep_until(self.reserve(tokens))


async def sleep_until(when: float) -> bool:
    """Sleep until `when` (time.time()); False when it woke more than LATE_S after it."""
    wait = when - time.time()
    if wait > 0:
        await asyncio.sleep(wait)
    return time.time() - when <= LATE_S


class RateLimiterActor:
    """Ray actor wrapper: one limiter for every actor of a job (create with `ray.remote`).

    Callers sleep on their own side until the time it returns: one round trip per request.
    """

    def __init__(self, requests_per_s: float | None, tokens_per_min: float | None):
        self._limiter = RateLimiter(requests_per_s, tokens_per_min)

    def reserve(self, tokens: int = 0) -> float:
        return self._limiter.reserve(tokens)

    def reserve_many(self, tokens: list[int], token_error: int = 0) -> list[float]:
        """Send times of several requests (their token estimates, in order), after correcting
        the schedule by the caller's summed token errors since its last call."""
        self.settle(token_error)
        return [self.reserve(t) for t in tokens]

    def settle(self, token_error: int) -> None:
        self._limiter.settle(token_error)


# How long one acquire waits on the limiter actor, retries and a restart included, before
# the process paces itself: a live actor answers in milliseconds, a restart in about a second.
REMOTE_WAIT_S = 5.0
_RETRY_PAUSE_S = 0.2
# A stage actor books again when its last booked send time is this close: far more than a round
# trip, so the shared schedule never runs dry while requests wait, yet the requests that arrive
# meanwhile are booked together (measured at 200 requests/s: ~2 calls/s per actor, not 100).
BOOK_AHEAD_S = 0.25


@dataclass(frozen=True)
class SharedLimiter:
    """A RateLimiterActor handle with the limits it was made with: what stage actors receive,
    so one that loses the actor can still pace itself (see RemoteRateLimiter)."""

    handle: Any
    requests_per_s: float | None
    tokens_per_min: float | None


class RemoteRateLimiter:
    """The async `acquire`/`settle` face of the shared limiter actor, for backends.

    Requests that wait at the same moment are booked in one call (`RateLimiterActor.reserve_many`),
    and token corrections ride along with the next call instead of costing one each.
    The actor restarts when it dies (`create_shared_limiter`), and Ray retries calls across the
    restart. A call that still fails is retried for up to REMOTE_WAIT_S; after that the actor
    counts as gone and this process paces itself with a local RateLimiter, so a dead limiter
    slows a job down instead of turning whole batches into rejected rows.
    """

    active = True

    def __init__(self, shared: SharedLimiter):
        self._shared = shared
        self._local: RateLimiter | None = None
        self._waiting: list[tuple[int, asyncio.Future]] = []  # (token estimate, its send time)
        self._booker: asyncio.Task | None = None
        self._token_error = 0  # not yet sent to the actor

    async def acquire(self, tokens: int = 0) -> None:
        for turn in range(REBOOKS + 1):
            when = await self._book(tokens) if self._local is None else None
            if when is None:
                return await self._local.acquire(tokens)  # the actor is gone: pace locally
            on_time = await sleep_until(when)
            if on_time or turn == REBOOKS or not self._shared.requests_per_s:
                return
            self.settle(-tokens)  # booked again: give back the tokens of the missed turn

    def settle(self, token_error: int) -> None:
        """Never raises: a lost correction only shifts the token schedule a little."""
        if not token_error or not self._shared.tokens_per_min:
            return  # no token budget: nothing to correct
        if self._local is not None:
            self._local.settle(token_error)
        else:
            self._token_error += token_error  # sent with the next booking

    async def _book(self, tokens: int) -> float | None:
        """This request's send time, or None once the actor is gone (then self._local is set)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((tokens, future))
        if self._booker is None or self._booker.done():
            self._booker = asyncio.create_task(self._book_waiting())
        return await future

    async def _book_waiting(self) -> None:
        """Book every waiting request in one call; repeat while requests wait, but not before
        the last booked send time is BOOK_AHEAD_S away."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                token_error, self._token_error = self._token_error, 0
                times = await self._reserve_remote([tokens for tokens, _ in batch], token_error)
                for i, (_, future) in enumerate(batch):
                    if not future.done():  # a cancelled request leaves its slot unused
                        future.set_result(None if times is None else times[i])
                if times is None:
                    if token_error:
                        self._local.settle(token_error)
                    break
                await sleep_until(times[-1] - BOOK_AHEAD_S)
        finally:  # the actor is gone, or this task stopped some other way: the rest pace themselves
            if self._waiting and self._local is None:
                self._fall_back(RuntimeError("the booking task stopped"))
            for _, future in self._waiting:
                if not future.done():
                    future.set_result(None)
            self._waiting = []

    async def _reserve_remote(self, tokens: list[int], token_error: int) -> list[float] | None:
        """The actor's send times, or None once it is gone (then self._local is set)."""
        import ray.exceptions

        deadline = time.monotonic() + REMOTE_WAIT_S
        while self._local is None:
            left = deadline - time.monotonic()
            try:
                return await asyncio.wait_for(self._shared.handle.reserve_many.remote(tokens, token_error), left)
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
