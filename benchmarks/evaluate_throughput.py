"""Judging throughput against a rate-limited, fixed-latency OpenAI-compatible judge.

    .venv/bin/python benchmarks/evaluate_throughput.py [--limit 20 200] [--latency 0.3]

The server (bpo_ray.testing.scripted_server) answers every request after `--latency` seconds
with a verdict and returns 429 above `--limit` requests/s (sliding 1 s window). Pairs are the
public Vicuna and Dolly test prompts with two made-up answers each. Two clients judge them:
  (a) the paper's gpt4_score.py loop: one blocking request per pair (openai sync client);
  (b) bpo-ray: `run_evaluate` on a local Ray (actor pool, async requests, shared limiter),
      both orders per pair.
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


def verdict(body: dict) -> str:
    return "Answer A covers the question better.\n[[A]]"


def pairs_file(prompts: list[str], rows: int, folder: str) -> str:
    """`rows` pairs cycling through the prompts, each made unique (no two keys alike)."""
    path = Path(folder) / "pairs.jsonl"
    with path.open("w") as out:
        for i in range(rows):
            prompt = f"{prompts[i % len(prompts)]} (#{i})"
            out.write(json.dumps({"id": f"q{i}", "prompt": prompt, "original_response": f"A short answer {i}.",
                                  "optimized_response": f"A longer, structured answer {i}, step by step."}) + "\n")
    return str(path)


def sequential_baseline(base_url: str, prompts: list[str], server) -> dict:
    """The paper's judging loop: a blocking call per pair, retried on 429."""
    from bpo_ray.evaluate.judge_prompts import PAIRWISE

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=5)
    started = time.monotonic()
    for i, prompt in enumerate(prompts):
        client.chat.completions.create(model="bench", max_tokens=512, temperature=0,
                                       messages=PAIRWISE.messages(prompt, f"A short answer {i}.", "A longer one."))
    wall = time.monotonic() - started
    return {"pairs": len(prompts), "wall_s": round(wall, 2), "requests_per_s": round(server.ok_rate(), 2)}


def bpo_ray_run(base_url: str, data: str, limit_rps: float, concurrency: int, out: str, server) -> dict:
    from bpo_ray.evaluate.config import EvaluateConfig
    from bpo_ray.evaluate.job import run_evaluate

    cfg = EvaluateConfig(input=[data], output=out, judge={
        "provider": "openai", "model": "bench", "base_url": base_url, "api_key_env": "BENCH_KEY",
        "concurrency": concurrency, "rate_limit": {"requests_per_s": limit_rps}, "max_retries": 8})
    return row_counts(run_evaluate(cfg), server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, nargs="+", default=[20.0, 200.0], help="server rate limits, requests/s")
    parser.add_argument("--pairs", type=int, default=None, help="pairs (default: 20 s of judging at each limit, >= 250)")
    parser.add_argument("--baseline-pairs", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight per judge actor")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    if DATA.is_dir():
        os.environ.setdefault("BPO_RAY_DATA_DIR", str(DATA))

    from bpo_ray.data.public import resolve_inputs

    vicuna, dolly = resolve_inputs(["bpo:vicuna_eval", "bpo:dolly_eval"])
    prompts = [json.loads(line)["text"] for line in Path(vicuna).read_text().splitlines() if line.strip()]
    prompts += [r["instruction"] for r in json.loads(Path(dolly).read_text())]

    def ours(server, limit: float, tmp: str) -> dict:
        pairs = args.pairs or max(250, int(10 * limit))  # two judgments per pair: 20 s of work
        return bpo_ray_run(server.base_url, pairs_file(prompts, pairs, tmp), limit, args.concurrency,
                           f"{tmp}/out", server)

    def table_row(base: dict, run: dict, limit: float) -> str:
        return (f"| evaluate (judging), {args.latency * 1000:.0f} ms latency, {limit:g} req/s limit "
                f"({run['rows']} judgments = {run['rows'] // 2} pairs × 2 orders; baseline {base['pairs']} "
                f"pairs, --concurrency {args.concurrency}) | the paper's judging loop: "
                f"{base['requests_per_s']} req/s | {run['requests_per_s']} req/s")

    run_and_print(args.limit, args.latency, verdict,
                  lambda server: sequential_baseline(server.base_url, prompts[: args.baseline_pairs], server),
                  ours, args.concurrency, table_row)

if __name__ == "__main__":
    main()
