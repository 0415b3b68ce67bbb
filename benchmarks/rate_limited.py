"""What the API-stage benchmarks share: each rate limit against fresh scripted servers (300 ms
latency, 429 above the limit), the paper's sequential loop first, then bpo-ray's job, both
rates counted by the server."""

from __future__ import annotations

import json
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


def run_and_print(limits: list[float], latency: float, reply_fn: Callable[[dict], str],
                  baseline: Callable[[Any], dict], ours: Callable[[Any, float, str], dict], concurrency: int,
                  table_row: Callable[[dict, dict, float], str]) -> None:
    """`at_limits` on a local 2-CPU Ray, then the results as JSON and as README table rows
    (`table_row(baseline figures, bpo-ray figures, limit)` gives a row's first cells)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results, lines = [], []
    for result in at_limits(limits, latency, reply_fn, baseline, ours, concurrency):
        base, run, limit = result["a_sequential"], result["b_bpo_ray"], result["server"]["limit_rps"]
        results.append(result)
        lines.append(f"{table_row(base, run, limit)} | {result['speedup_b_over_a']}x | "
                     f"{result['b_share_of_limit']:.1%} of limit | "
                     f"{run['rows_lost']} rows lost, {run['server_429']} × 429 |")
    ray.shutdown()
    print(json.dumps(results, indent=2))
    print("\n" + "\n".join(lines))
