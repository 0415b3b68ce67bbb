"""Construct throughput against a rate-limited, fixed-latency OpenAI-compatible server.

    .venv/bin/python benchmarks/construct_throughput.py [--limit 20 200] [--rows N] [--concurrency 128]

The server (bpo_ray.testing.scripted_server) answers every request after `--latency` seconds
and returns 429 above the limit (sliding 1 s window). For each `--limit`, two clients build pairs
from the public BPO feedback (`bpo:feedback_val` and `bpo:bpo_test`: $BPO_RAY_DATA_DIR, else
../shared/data/bpo beside the repo, else downloaded once; repeated with numbered instructions
where `--rows` asks for more than their 500 rows):
  (a) the original BPO way: one blocking request after another (openai sync client);
  (b) bpo-ray: `run_construct` on a local Ray (actor pool, async requests, shared limiter).
Both rates are measured by the server (200 replies/s from first to last) in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import openai

# benchmarks/ (the script's folder) is on sys.path
from rate_limited import row_counts, run_and_print

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


def bpo_ray_run(base_url: str, inputs: list[str], rows: int, limit_rps: float, concurrency: int, out: str,
                server) -> dict:
    from bpo_ray.construct.config import ConstructConfig
    from bpo_ray.construct.job import run_construct

    cfg = ConstructConfig(input=inputs, output=out, limit=rows, model={
        "provider": "openai", "model": "bench", "base_url": base_url, "api_key_env": "BENCH_KEY",
        "concurrency": concurrency, "rate_limit": {"requests_per_s": limit_rps}, "max_retries": 8})
    return row_counts(run_construct(cfg), server)


def feedback_rows(inputs: list[str], rows: int, folder: str) -> list[str]:
    """The public files, or, for more rows than they hold, one JSONL file that repeats them with
    numbered instructions (distinct rows: each has its own resume key)."""
    records = json.loads(Path(inputs[0]).read_text()) + json.loads(Path(inputs[1]).read_text())
    if rows <= len(records):
        return inputs
    path = Path(folder) / "feedback.jsonl"
    with path.open("w") as out:
        for i in range(rows):
            record = dict(records[i % len(records)])
            field = "instruction" if "instruction" in record else "prompt"
            record[field] = f"{record[field]} (#{i})"
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return [str(path)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, nargs="+", default=[20.0, 200.0],
                        help="server rate limits to sweep, requests/s")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows for bpo-ray (default: 20 s of work at each limit, at least 500)")
    parser.add_argument("--baseline-rows", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight per stage actor")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    if DATA.is_dir():
        os.environ.setdefault("BPO_RAY_DATA_DIR", str(DATA))
    from bpo_ray.data.public import resolve_inputs

    public = resolve_inputs(["bpo:feedback_val", "bpo:bpo_test"])
    feedback = json.loads(Path(public[0]).read_text())

    def ours(server, limit: float, tmp: str) -> dict:
        rows = args.rows or max(500, int(20 * limit))
        return bpo_ray_run(server.base_url, feedback_rows(public, rows, tmp), rows, limit, args.concurrency,
                           f"{tmp}/out", server)

    def table_row(base: dict, run: dict, limit: float) -> str:
        return (f"| construct, {args.latency * 1000:.0f} ms latency, {limit:g} req/s limit ({run['rows']} rows, "
                f"--concurrency {args.concurrency}) | {base['requests_per_s']} req/s | {run['requests_per_s']} req/s")

    run_and_print(args.limit, args.latency, reply,
                  lambda server: sequential_baseline(server.base_url, feedback[: args.baseline_rows], server),
                  ours, args.concurrency, table_row)

if __name__ == "__main__":
    main()
