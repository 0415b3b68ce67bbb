"""What the API-stage benchmarks share: each rate limit against fresh scripted servers (300 ms
latency, 429 above the limit), the paper's sequential loop first, then bpo-ray's job, both
rates counted by the server."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from typing import Any


def at_limits(limits: list[float], latency: float, reply_fn: Callable[[dict], str],
              baseline: Callable[[Any], dict], ours: Callable[[Any, float, str], dict],
              concurrency: int) -> Iterator[dict]:
    """Per limit: {server, a_sequential, b_bpo_ray, speedup_b_over_a, b_share_of_limit}.
    `baseline(server)` and `ours(server, limit, tmp_folder)` each get a server of their own."""
    from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

    for limit in limits:
        def server():
            return ScriptedOpenAIServer(reply_fn=reply_fn, latency_s=latency, rate_limit_rps=limit, model="bench")

        with server() as srv:
            base = baseline(srv)
        with tempfile.TemporaryDirectory() as tmp, server() as srv:
            run = ours(srv, limit, tmp)
        yield {"server": {"latency_s": latency, "limit_rps": limit, "concurrency": concurrency},
               "a_sequential": base, "b_bpo_ray": run,
               "speedup_b_over_a": round(run["requests_per_s"] / base["requests_per_s"], 2),
               "b_share_of_limit": round(run["requests_per_s"] / limit, 3)}


def row_counts(summary: dict, server) -> dict:
    """The figures both benchmarks report for bpo-ray's run."""
    return {"rows": summary["rows_in"], "wall_s": summary["wall_s"], "requests_per_s": round(server.ok_rate(), 2),
            "server_429": server.stats.by_status.get(429, 0), "retries": summary["retries"],
            "rows_out": summary["rows_out"], "rows_rejected": summary["rows_rejected"],
            "rows_lost": summary["rows_in"] - summary["rows_out"] - summary["rows_rejected"],
            "reject_reasons": summary["reject_reasons"]}
