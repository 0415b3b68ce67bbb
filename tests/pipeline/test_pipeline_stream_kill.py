"""A streamed pipeline killed with SIGKILL mid-run, then run again: every table ends complete
with each key once, and the judge re-pays only what was in flight plus a few seconds of work
(counted by the servers)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from killing import kill_after_requests  # tests/ is on sys.path (conftest)
from outputs import table

from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

PROMPTS = 100
RATE = 20.0
FLUSH_S = 1.0
SLACK_S = 4.0  # as the other kill tests: blocks being answered, Ray's processes outliving the driver


def judged(body: dict) -> str:
    """Which judgment a request is: the question and which answer came first."""
    user = body["messages"][-1]["content"]
    question = re.search(r"\[Question\]\n(.*?)\n", user).group(1)
    first = re.search(r"\[Answer A\]\n(.*?)\n", user).group(1)
    return f"{question}|{first}"


def rewritten(body: dict) -> str:
    return body["messages"][-1]["content"].split("\n\n", 1)[1]


def test_kill_9_of_a_streamed_pipeline_resumes_with_every_row_once(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?"}) + "\n"
                            for i in range(PROMPTS)))
    out = tmp_path / "run"
    with ScriptedOpenAIServer(reply_fn=lambda b: rewritten(b) + " Explain why.", latency_s=0.05) as optimizer, \
            ScriptedOpenAIServer(reply_fn=lambda b: "Answer to " + b["messages"][-1]["content"], latency_s=0.05) as target, \
            ScriptedOpenAIServer(reply_fn=lambda b: "[[A]]", latency_s=0.05) as judge:
        def api(server, rate):
            return {"provider": "openai", "model": "scripted", "base_url": server.base_url, "concurrency": 16,
                    "rate_limit": {"requests_per_s": rate}}

        config = tmp_path / "pipeline.yaml"
        config.write_text(yaml.safe_dump({
            "output": str(out), "ray_address": "local",
            "optimize": {"input": [str(data)], "optimizer": api(optimizer, 10), "flush_s": FLUSH_S, "num_actors": 1},
            "generate": {"targets": [api(target, 40)], "flush_s": FLUSH_S, "num_actors": 1},
            "evaluate": {"judge": api(judge, RATE), "flush_s": FLUSH_S, "num_actors": 1},
        }))
        in_flight = kill_after_requests("pipeline", config, judge, 100)
        first = {name: server.stats.requests for name, server in
                 (("optimizer", optimizer), ("target", target), ("judge", judge))}
        judged_first = {judged(body) for body in judge.stats.bodies}
        saved = {stage: len(table(out / stage, name)) for stage, name in
                 (("optimize", "optimized"), ("generate", "responses"), ("evaluate", "judgments"))}

        from bpo_ray.pipeline.config import PipelineConfig
        from bpo_ray.pipeline.run import run_pipeline

        resumed = run_pipeline(PipelineConfig.model_validate({**yaml.safe_load(config.read_text()), "ray_address": None}))
        judged_again = [judged(body) for body in judge.stats.bodies[first["judge"]:]]
        optimizer_again = optimizer.stats.requests - first["optimizer"]

    repaid = len(judged_first.intersection(judged_again))
    print(f"before the kill: {first} ({in_flight} judgments in flight), saved {saved}; "
          f"judgments re-paid {repaid}, optimizer calls after {optimizer_again}")
    assert saved["optimize"] > 0 and saved["evaluate"] > 0  # flushed while the stream ran
    assert repaid <= in_flight + RATE * (FLUSH_S + SLACK_S), (first, in_flight, saved, repaid)
    assert optimizer_again == PROMPTS - saved["optimize"]  # the rows not saved, each once
    assert len(judged_again) == len(set(judged_again)) == 2 * PROMPTS - saved["evaluate"]
    for stage, name, rows in (("optimize", "optimized", PROMPTS), ("generate", "responses", PROMPTS),
                              ("evaluate", "judgments", 2 * PROMPTS)):
        keys = [r["key"] for r in table(out / stage, name)]
        assert len(keys) == len(set(keys)) == rows, stage
        s = resumed["stages"][stage]
        assert s["rows_in"] == s["rows_skipped"] + s["rows_out"] + s["rows_rejected"] and s["rows_rejected"] == 0
    assert resumed["stages"]["optimize"]["rows_skipped"] == saved["optimize"]


@pytest.fixture(autouse=True)
def _session_ray(ray_local):
    """The resumed run joins the session's Ray; the killed one ran its own."""
