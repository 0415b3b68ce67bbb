"""Kill -9 a job mid-run, as a crash or a preempted node would: the helper the kill-and-resume
tests of the paying stages share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_after_requests(verb: str, config: Path, server, paid: int, *, timeout_s: float = 180) -> int:
    """Run `bpo-ray VERB --config CONFIG` in its own process group on a Ray of its own, SIGKILL
    the group once `server` counted `paid` requests, and return how many were in flight then.
    Fails the test if the job ended first or never got going."""
    cmd = [sys.executable, "-m", "bpo_ray.cli", verb, "--config", str(config)]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while server.stats.requests < paid and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        in_flight = server.stats.in_flight()
        assert proc.poll() is None, "the job ended before it could be killed"
        assert server.stats.requests >= paid, "the job did not get going in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    wait_until_quiet(server)  # Ray's workers outlive the killed driver for a second or two
    return in_flight


def wait_until_quiet(server, quiet_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Until the server has had no new request for `quiet_s`: the resumed run's requests are
    then its own, not the killed job's last ones."""
    deadline, last, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        if server.stats.requests != last:
            last, since = server.stats.requests, time.monotonic()
        time.sleep(0.05)
