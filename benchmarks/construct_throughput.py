"""Construct throughput against a rate-limited, fixed-latency OpenAI-compatible server.

    .venv/bin/python benchmarks/construct_throughput.py [--rows 500] [--latency 0.3] [--limit 20]

The server (bpo_ray.testing.scripted_server) answers every request after `--latency` seconds
and returns 429 above `--limit` requests/s (sliding 1 s window). Two clients build pairs from
the public BPO feedback (`bpo:feedback_val` and `bpo:bpo_test`: $BPO_RAY_DATA_DIR, else
../shared/data/bpo beside the repo, else downloaded once):
  (a) the original BPO way: one blocking request after another (openai sync client);
  (b) bpo-ray: `run_construct` on a local Ray (actor pool, async requests, shared limiter).
Both rates are measured by the server (200 replies/s from first to last) in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bpo"


def reply(body: dict) -> str:
    content = body["messages"][0]["content"]
    instruction = content.split("[Instruction]\n", 1)[1].split("\n\n[", 1)[0] if "[Instruction]\n" in content else "?"
    return f"Comparison: the preferred response is correct.\nOptimized Instruction: {instruction} Answer step by step."


def sequential_baseline(base_url: str, rows: list[dict], server) -> dict:
    """The paper's data-construction loop: a blocking call per row, retried on 429."""
    from bpo_ray.construct.prompts import construction_messages

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=5)
    started = time.monotonic()
    for row in rows:
        ctx = row.get("context")
        client.chat.completions.create(
            model="bench", max_tokens=256, temperature=0,
            messages=construction_messages(row["instruction"], ctx or "", row["good_res"], row["bad_res"],
                                           has_context=ctx is not None))
    wall = time.monotonic() - started
    return {"rows": len(rows), "wall_s": round(wall, 2), "requests_per_s": round(server.ok_rate(), 2)}


def bpo_ray_run(base_url: str, inputs: list[str], rows: int, limit_rps: float, out: str, server) -> dict:
    from bpo_ray.construct.config import ConstructConfig
    from bpo_ray.construct.job import run_construct

    cfg = ConstructConfig(input=inputs, output=out, limit=rows, model={
        "provider": "openai", "model": "bench", "base_url": base_url, "api_key_env": "BENCH_KEY",
        "concurrency": 16, "rate_limit": {"requests_per_s": limit_rps}, "max_retries": 8})
    summary = run_construct(cfg)
    lost = summary["rows_in"] - summary["rows_out"] - summary["rows_rejected"]
    return {"rows": summary["rows_in"], "wall_s": summary["wall_s"], "requests_per_s": round(server.ok_rate(), 2),
            "server_429": server.stats.by_status.get(429, 0), "retries": summary["retries"],
            "rows_out": summary["rows_out"], "rows_rejected": summary["rows_rejected"], "rows_lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500, help="rows for bpo-ray (the baseline gets --baseline-rows)")
    parser.add_argument("--baseline-rows", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--limit", type=float, default=20.0, help="server rate limit, requests/s")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

    if DATA.is_dir():
        os.environ.setdefault("BPO_RAY_DATA_DIR", str(DATA))
    from bpo_ray.data.public import resolve_inputs

    inputs = resolve_inputs(["bpo:feedback_val", "bpo:bpo_test"])
    feedback = json.loads(Path(inputs[0]).read_text())

    with ScriptedOpenAIServer(reply_fn=reply, latency_s=args.latency, rate_limit_rps=args.limit, model="bench") as server:
        base = sequential_baseline(server.base_url, feedback[: args.baseline_rows], server)
    with ScriptedOpenAIServer(reply_fn=reply, latency_s=args.latency, rate_limit_rps=args.limit, model="bench") as server:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory() as out:
            ours = bpo_ray_run(server.base_url, inputs, args.rows, args.limit, out, server)
        ray.shutdown()

    result = {
        "server": {"latency_s": args.latency, "limit_rps": args.limit},
        "a_sequential": base,
        "b_bpo_ray": ours,
        "speedup_b_over_a": round(ours["requests_per_s"] / base["requests_per_s"], 2),
        "b_share_of_limit": round(ours["requests_per_s"] / args.limit, 3),
    }
    print(json.dumps(result, indent=2))
    print(f"\n| construct, {args.latency * 1000:.0f} ms latency, {args.limit:g} req/s limit | "
          f"{base['requests_per_s']} req/s | {ours['requests_per_s']} req/s | "
          f"{result['speedup_b_over_a']}x | {result['b_share_of_limit']:.1%} of limit | "
          f"{ours['rows_lost']} rows lost, {ours['server_429']} × 429 |")


if __name__ == "__main__":
    main()
