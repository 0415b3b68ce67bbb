"""The serving graph with vLLM engines: `bpo-ray serve --provider vllm`'s graph (the embedded
model as optimizer and as target, each replica one engine, continuous batching instead of
`serve.batch`) behind the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from ports import free_port  # tests/ is on sys.path (conftest)
from ray import serve

from bpo_ray.models import ChatRequest, ModelSpec, build_backend
from bpo_ray.serve.config import ServeConfig
from bpo_ray.serve.graph import start_graph

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = ["How do I boil an egg?", "Write a haiku about rain.", "What is a prime number?",
             "Name three planets.", "Why is the sky blue?", "Give me a synonym for happy."]
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def client(ray_local, vllm_spec):
    engine = vllm_spec().model_dump(include={"provider", "vllm"})
    cfg = ServeConfig.model_validate({
        "port": free_port(), "mode": "greedy",
        "optimizer": {**engine, "model": "embedded", "sampling": {"max_tokens": 48}},
        "targets": [{**engine, "model": "embedded", "sampling": {"temperature": 0, "max_tokens": MAX_TOKENS}}],
    })
    url = start_graph(cfg, name="vllm-graph")
    try:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
    finally:
        serve.shutdown()


def transformers_answers(questions: list[str]) -> list[str]:
    local = build_backend(ModelSpec(provider="local", model="embedded",
                                    sampling={"temperature": 0, "max_tokens": MAX_TOKENS}))
    results = [asyncio.run(local.chat_batch([ChatRequest(messages=[{"role": "user", "content": q}])]))[0]
               for q in questions]
    return [r.text for r in results]


def ask(client: openai.OpenAI, model: str, question: str):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}])


def test_concurrent_answers_match_transformers(client):
    assert sorted(m.id for m in client.models.list()) == ["bpo/embedded", "embedded"]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:  # all in the engine at once
        replies = list(pool.map(lambda q: ask(client, "embedded", q), QUESTIONS))
    assert [r.choices[0].message.content for r in replies] == transformers_answers(QUESTIONS)
    assert all(r.usage.completion_tokens > 0 for r in replies)


def test_streamed_answer_equals_the_whole_one(client):
    whole = ask(client, "embedded", QUESTIONS[4]).choices[0].message.content
    chunks = [c.choices[0].delta.content for c in client.chat.completions.create(
        model="embedded", messages=[{"role": "user", "content": QUESTIONS[4]}], stream=True)
        if c.choices and c.choices[0].delta.content]
    assert len(chunks) > 3 and "".join(chunks) == whole


def test_bpo_answers_the_optimized_prompt(client):
    reply = ask(client, "bpo/embedded", QUESTIONS[0])
    bpo = reply.model_extra["bpo"]
    assert bpo["optimizer"] == "embedded" and bpo["optimized_prompt"]
    request = urllib.request.Request(str(client.base_url) + "optimize", data=json.dumps({"prompt": QUESTIONS[0]}).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        served = json.loads(resp.read())
    assert served["optimized_prompt"] == bpo["optimized_prompt"]  # greedy: the same rewrite again
    # The target answered the optimized prompt: the same as asking it that prompt directly.
    direct = ask(client, "embedded", bpo["optimized_prompt"]).choices[0].message.content
    assert reply.choices[0].message.content == direct
