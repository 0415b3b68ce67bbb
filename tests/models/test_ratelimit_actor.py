"""The shared limiter actor under failure: a killed limiter restarts, a gone one is replaced by
local pacing, and neither turns a request into an error."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from bpo_ray.models import ratelimit
from bpo_ray.models.ratelimit import (
    HEADROOM,
    RateLimiterActor,
    RemoteRateLimiter,
    SharedLimiter,
    create_shared_limiter,
)

RATE = 20.0
N = 10
# N requests spaced at the limit span N-1 intervals; a little under, for timer jitter.
MIN_SPAN_S = (N - 1) / (RATE * HEADROOM) * 0.92

FALLBACK = "shared rate limiter is unavailable"


async def _acquire_times(limiter: RemoteRateLimiter, n: int = N) -> list[float]:
    """When each of n concurrent acquires returned (as a stage actor's requests do)."""

    async def one() -> float:
        await limiter.acquire(10)
        return time.monotonic()

    return sorted(await asyncio.gather(*(one() for _ in range(n))))


def _actor_pid(handle) -> int:
    import ray

    return ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def test_killed_limiter_restarts_and_keeps_spacing(ray_local, caplog):
    import ray

    shared = create_shared_limiter(RATE, 6000)
    limiter = RemoteRateLimiter(shared)
    asyncio.run(_acquire_times(limiter, 1))
    pid = _actor_pid(shared.handle)

    ray.kill(shared.handle, no_restart=False)
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        times = asyncio.run(_acquire_times(limiter))
        limiter.settle(500)
    assert times[-1] - times[0] >= MIN_SPAN_S, times
    assert times[-1] - start < 30
    assert FALLBACK not in caplog.text  # served by the restarted actor, not the fallback
    assert _actor_pid(shared.handle) != pid


def test_dead_limiter_falls_back_to_local_pacing(ray_local, caplog):
    import ray

    shared = create_shared_limiter(RATE, 6000)
    limiter = RemoteRateLimiter(shared)
    asyncio.run(_acquire_times(limiter, 1))

    ray.kill(shared.handle, no_restart=True)
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        times = asyncio.run(_acquire_times(limiter))
        limiter.settle(500)
        again = asyncio.run(_acquire_times(limiter, 2))  # stays local, warns once
    assert times[0] - start < 6  # no longer than the remote wait
    assert times[-1] - times[0] >= MIN_SPAN_S, times
    assert again[1] - again[0] >= MIN_SPAN_S / (N - 1)
    assert caplog.text.count(FALLBACK) == 1
    assert "20 requests/s and 6000 tokens/min" in caplog.text


class _SlowLimiterActor(RateLimiterActor):
    """A limiter actor that has stopped answering (a stuck node, say)."""

    def reserve(self, tokens: int = 0) -> float:
        time.sleep(3)
        return super().reserve(tokens)


def test_a_limiter_that_does_not_answer_is_given_up(ray_local, monkeypatch, caplog):
    import ray

    monkeypatch.setattr(ratelimit, "REMOTE_WAIT_S", 0.5)
    handle = ray.remote(num_cpus=0)(_SlowLimiterActor).remote(RATE, None)
    limiter = RemoteRateLimiter(SharedLimiter(handle, RATE, None))
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        times = asyncio.run(_acquire_times(limiter, 4))
    assert times[0] - start < 2.5
    assert times[-1] - times[0] >= 3 / (RATE * HEADROOM) * 0.9
    assert caplog.text.count(FALLBACK) == 1 and "TimeoutError" in caplog.text
    ray.kill(handle)


class _FlakyHandle:
    """An actor handle whose calls fail `failures` times as a restarting actor's do (Ray
    retries those itself with max_task_retries=-1; this covers the ones that surface)."""

    def __init__(self, failures: int):
        self.failures = failures
        self.reserve_many = self

    def remote(self, tokens: list[int], token_error: int = 0):
        import ray.exceptions

        async def call() -> list[float]:
            if self.failures:
                self.failures -= 1
                raise ray.exceptions.ActorUnavailableError("restarting", None)
            return [time.time()] * len(tokens)

        return call()


def test_a_briefly_unavailable_limiter_is_retried(caplog):
    limiter = RemoteRateLimiter(SharedLimiter(_FlakyHandle(2), RATE, None))
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        asyncio.run(limiter.acquire())
    assert 0.3 < time.monotonic() - start < 2
    assert FALLBACK not in caplog.text


class _CountingHandle:
    """A limiter handle answered in this process, counting its calls (requests booked per call)."""

    def __init__(self, times=None):
        self.calls: list[int] = []
        self.limiter = ratelimit.RateLimiter(RATE)
        self.times = times  # tokens -> send times, instead of the limiter's
        self.reserve_many = self

    def remote(self, tokens: list[int], token_error: int = 0):
        self.calls.append(len(tokens))

        async def call() -> list[float]:
            return self.times(tokens) if self.times else [self.limiter.reserve(t) for t in tokens]

        return call()


def test_requests_waiting_together_are_booked_in_one_call():
    handle = _CountingHandle()
    times = asyncio.run(_acquire_times(RemoteRateLimiter(SharedLimiter(handle, RATE, None))))
    assert handle.calls == [N]
    assert times[-1] - times[0] >= MIN_SPAN_S, times


def test_a_request_that_wakes_late_is_booked_again_not_sent_in_a_burst():
    handle = _CountingHandle(times=lambda tokens: [time.time() - 1.0] * len(tokens))  # always late
    asyncio.run(RemoteRateLimiter(SharedLimiter(handle, RATE, None)).acquire())
    assert handle.calls == [1] * (ratelimit.REBOOKS + 1)  # booked again, then sent all the same


def test_settle_on_a_dead_actor_never_raises(ray_local):
    import ray

    shared = create_shared_limiter(None, 6000)
    ray.kill(shared.handle, no_restart=True)
    fresh = RemoteRateLimiter(shared)  # has not noticed yet
    fresh.settle(1000)
    fresh.settle(-1000)


@pytest.mark.parametrize("rps, tpm", [(None, None), (0, 0)])
def test_no_limit_no_actor(rps, tpm):
    assert create_shared_limiter(rps, tpm) is None
