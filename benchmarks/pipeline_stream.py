"""Optimize -> generate -> evaluate: streamed as one Ray Data plan vs one stage after another.

    .venv/bin/python benchmarks/pipeline_stream.py [--prompts 200] [--limit 20] [--latency 0.3]

Three OpenAI-compatible servers (bpo_ray.testing.scripted_server), each answering after
`--latency` seconds and returning 429 above `--limit` requests/s: the optimizer (one call per
prompt), one target (two calls per prompt) and the judge (two calls per pair, both orders).
The same pipeline config runs twice in this process on a local Ray, with `stream: false` and
with `stream: true`, into fresh folders. At one limit for all three the stages one after
another take (1 + 2 + 2) x prompts / limit seconds of calls, and streamed they take about as
long as the busiest stage (2 x prompts / limit): the best ratio is 2.5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rewrite(body: dict) -> str:
    return body["messages"][-1]["content"].split("\n\n", 1)[1] + " Answer step by step, with an example."


def answer(body: dict) -> str:
    return "An answer of some length to: " + body["messages"][-1]["content"][:80]


def verdict(body: dict) -> str:
    return "Answer A covers the question better.\n[[A]]"


def run(folder: Path, prompts: str, urls: dict[str, str], limit: float, stream: bool) -> dict:
    from bpo_ray.pipeline.config import PipelineConfig
    from bpo_ray.pipeline.run import run_pipeline

    def api(role: str) -> dict:
        return {"provider": "openai", "model": "bench", "base_url": urls[role], "api_key_env": "BENCH_KEY",
                "concurrency": 32, "rate_limit": {"requests_per_s": limit}, "max_retries": 8}

    cfg = PipelineConfig.model_validate({
        "output": str(folder), "stream": stream,
        "optimize": {"input": [prompts], "optimizer": api("optimizer")},
        "generate": {"targets": [api("target")]},
        "evaluate": {"judge": api("judge")},
    })
    started = time.monotonic()
    out = run_pipeline(cfg)
    return {"wall_s": round(time.monotonic() - started, 1),
            **{stage: out["stages"][stage]["rows_out"] for stage in ("optimize", "generate", "evaluate")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--limit", type=float, default=20.0, help="each server's rate limit, requests/s")
    parser.add_argument("--latency", type=float, default=0.3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["BENCH_KEY"] = "bench"
    sys.path.insert(0, str(ROOT))
    from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

    work = Path(tempfile.mkdtemp(prefix="bpo-stream-bench-"))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}: how do tides work?"}) + "\n"
                               for i in range(args.prompts)))
    results = {}
    for stream in (False, True):
        servers = {role: ScriptedOpenAIServer(reply_fn=fn, latency_s=args.latency, rate_limit_rps=args.limit * 1.05,
                                              model="bench", api_key="bench").start()
                   for role, fn in (("optimizer", rewrite), ("target", answer), ("judge", verdict))}
        try:
            name = "streamed" if stream else "one after another"
            results[name] = run(work / name.replace(" ", "-"), str(prompts),
                                {role: s.base_url for role, s in servers.items()}, args.limit, stream)
            results[name]["requests"] = sum(s.stats.requests for s in servers.values())
        finally:
            for server in servers.values():
                server.stop()
    ideal = (1 + 2 + 2) * args.prompts / args.limit
    results["speedup"] = round(results["one after another"]["wall_s"] / results["streamed"]["wall_s"], 2)
    results["calls_at_the_limit_s"] = {"one after another": ideal, "streamed (busiest stage)": 2 * args.prompts / args.limit}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
