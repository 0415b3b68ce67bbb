"""Serving throughput and latency of the BPO graph on the embedded model, against the backend itself.

    .venv/bin/python benchmarks/serve_throughput.py [--concurrency 1 8 32] [--max-tokens 64]

Four ways to answer the same chat requests (greedy, `--max-tokens` new tokens at most), each at
every concurrency (`--requests-per-client` requests per client thread, all threads at once):
  (a) direct: the local backend in this process, `chat_batch` of the concurrent requests at once
      (concurrency 1: one request at a time): the ceiling of what a replica can do;
  (b) the graph's plain `X` path with dynamic batching off (`batch_size: 1`);
  (c) the plain path with dynamic batching (`batch_size: 32`);
  (d) `bpo/X`: the optimizer rewrites the prompt first, then the target answers;
  (e) (c) with stream=true: also the time to each answer's first text;
  (f) (c) with the target replica on 2 CPUs (2 torch threads) and the optimizer on none.
(b)-(d) go through Ray Serve over HTTP with the `openai` client. Figures: completion tokens per
second over the wall time of the round, and per-request latency p50 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Tell me about owls.", "How do tides work?", "Give me three tips for a job interview.",
           "Why is the sky blue?", "Write a short poem about rain.", "What is a prime number?",
           "How do I make tea?", "Explain what a neural network is."]


def _round(fn, concurrency: int, per_client: int) -> dict:
    latencies, tokens = [], []  # list.append is atomic across threads; `+=` on a shared int is not

    def client(worker: int) -> None:
        for n in range(per_client):
            started = time.monotonic()
            tokens.append(fn(PROMPTS[(worker + n) % len(PROMPTS)]))
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.monotonic() - started
    tokens = sum(tokens)
    latencies.sort()
    return {"tokens_per_s": round(tokens / wall, 1), "p50_s": round(statistics.median(latencies), 2),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)}


def direct(concurrency: int, per_client: int, max_tokens: int) -> dict:
    from bpo_ray.models import ChatRequest, ModelSpec, build_backend

    backend = build_backend(ModelSpec(model="embedded", batch_size=32, device="cpu"))
    sampling = {"max_tokens": max_tokens, "temperature": 0.0}
    latencies, tokens = [], 0
    started = time.monotonic()
    for n in range(per_client):
        asks = [ChatRequest(messages=[{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}], sampling=sampling)
                for i in range(concurrency)]
        begun = time.monotonic()
        results = asyncio.run(backend.chat_batch(asks))
        latencies += [time.monotonic() - begun] * concurrency
        tokens += sum(r.completion_tokens for r in results)
    wall = time.monotonic() - started
    latencies.sort()
    return {"tokens_per_s": round(tokens / wall, 1), "p50_s": round(statistics.median(latencies), 2),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)}


def served(batch_size: int, model: str, concurrencies: list[int], per_client: int, max_tokens: int, *,
           target_cpus: float = 1, optimizer_cpus: float = 1, stream: bool = False) -> dict:
    import openai
    from ray import serve

    from bpo_ray.serve.config import ServeConfig
    from bpo_ray.serve.graph import start_graph

    cfg = ServeConfig.model_validate({
        "optimizer": {"model": "embedded", "device": "cpu", "batch_size": 32, "sampling": {"max_tokens": 96}},
        "optimizer_deployment": {"num_cpus": optimizer_cpus},
        "mode": "greedy",
        "targets": [{"model": "embedded", "device": "cpu", "batch_size": batch_size,
                     "deployment": {"max_ongoing_requests": 64, "num_cpus": target_cpus}}],
        "port": 8321,
    })
    url = start_graph(cfg, name="bench")
    client = openai.OpenAI(base_url=url, api_key="unused", timeout=600)

    first_tokens: list[float] = []

    def ask(prompt: str) -> int:
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            done = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                  temperature=0)
            return done.usage.completion_tokens
        started, first, used = time.monotonic(), None, 0
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    temperature=0, stream=True,
                                                    stream_options={"include_usage": True}):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic() - started
            used = chunk.usage.completion_tokens if chunk.usage else used
        first_tokens.append(first if first is not None else time.monotonic() - started)
        return used

    ask(PROMPTS[0])  # warm
    out = {}
    try:
        for c in concurrencies:
            first_tokens.clear()
            out[c] = _round(ask, c, per_client)
            if stream:  # time to the first text, per request
                out[c]["first_text_p50_s"] = round(statistics.median(first_tokens), 2)
        return out
    finally:
        serve.delete("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bpo_ray.ray_utils import ensure_ray

    results = {"(a) direct backend": {c: direct(c, args.requests_per_client, args.max_tokens)
                                      for c in args.concurrency}}
    ensure_ray()
    from bpo_ray.serve.model_server import start_serve

    start_serve("127.0.0.1", 8321)
    results["(b) graph X, no batching"] = served(1, "embedded", args.concurrency, args.requests_per_client, args.max_tokens)
    results["(c) graph X, batching"] = served(32, "embedded", args.concurrency, args.requests_per_client, args.max_tokens)
    results["(d) graph bpo/X, batching"] = served(32, "bpo/embedded", args.concurrency, args.requests_per_client,
                                                  args.max_tokens)
    results["(e) graph X, batching, streamed"] = served(32, "embedded", args.concurrency, args.requests_per_client,
                                                        args.max_tokens, stream=True)
    # The plain path with the target replica on both cores (the optimizer idles on none).
    results["(f) graph X, batching, 2-CPU replica"] = served(32, "embedded", args.concurrency,
                                                             args.requests_per_client, args.max_tokens,
                                                             target_cpus=2, optimizer_cpus=0)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
