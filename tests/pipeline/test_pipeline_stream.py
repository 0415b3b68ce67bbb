"""Optimize -> generate -> evaluate streamed as one Ray Data plan, against three real HTTP
servers (optimizer, targets, judge): the stages work at the same time, and the outputs, keys
and model calls are those of the same stages run one after another, also when resuming."""

from __future__ import annotations

import collections
import re

import pytest
from outputs import table, write_jsonl  # tests/ is on sys.path (conftest)

from bpo_ray.optimize.job import run_optimize
from bpo_ray.pipeline.config import PipelineConfig
from bpo_ray.pipeline.run import run_pipeline
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.usefixtures("ray_local")

LONG = "Explain the tides. " * 40  # under optimize's max_input_chars, over generate's
PROMPTS = [{"id": f"p{i}", "prompt": f"Question {i}: how do owls hunt at night?", "dataset": "owls"}
           for i in range(20)] + [
    {"id": "long", "prompt": LONG, "dataset": "owls"},
    {"id": "empty", "prompt": "   ", "dataset": "owls"},  # optimize's reader rejects it
]


def rewrite(body: dict) -> str:
    prompt = body["messages"][-1]["content"].split("\n\n", 1)[1]
    return prompt if prompt.startswith("Question 1:") else prompt + " Answer step by step."  # p1, p1x: unchanged


def answer(body: dict) -> str:
    return "ANSWER " + "x" * len(body["messages"][-1]["content"])  # longer for the longer prompt


def judge_longer(body: dict) -> str:
    user = body["messages"][-1]["content"]
    a = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", user, re.S).group(1)
    b = re.search(r"\[Answer B\]\n(.*?)\n\[End of answer B\]", user, re.S).group(1)
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


class Servers:
    def __init__(self):
        # The optimizer is paced by its own rate limit (config): its rows finish over seconds, so a
        # streamed judge starts while the optimizer still works.
        self.optimizer = ScriptedOpenAIServer(reply_fn=rewrite, latency_s=0.05)
        self.target = ScriptedOpenAIServer(reply_fn=answer, latency_s=0.05)
        self.judge = ScriptedOpenAIServer(reply_fn=judge_longer, latency_s=0.05)

    def __enter__(self):
        for server in (self.optimizer, self.target, self.judge):
            server.start()
        return self

    def __exit__(self, *exc):
        for server in (self.optimizer, self.target, self.judge):
            server.stop()

    def calls(self) -> tuple[int, int, int]:
        return self.optimizer.stats.requests, self.target.stats.requests, self.judge.stats.requests


def api(url: str, **kw) -> dict:
    return {"provider": "openai", "model": "scripted", "base_url": url, "max_retries": 1, "timeout_s": 10, **kw}


def pipeline(tmp_path, servers: Servers, folder: str, **kw) -> PipelineConfig:
    data = tmp_path / "prompts.jsonl"
    if not data.exists():
        write_jsonl(data, PROMPTS)
    return PipelineConfig.model_validate({
        "output": str(tmp_path / folder),
        "optimize": {"input": [str(data)], "optimizer": api(servers.optimizer.base_url, concurrency=2,
                                                            rate_limit={"requests_per_s": 2}),
                     "num_actors": 1},
        "generate": {"max_input_chars": 500, "num_actors": 1, "targets": [api(servers.target.base_url, name="t1"),
                                                         api(servers.target.base_url, name="t2")]},
        "evaluate": {"judge": api(servers.judge.base_url), "num_actors": 1},
        **kw,
    })


def outputs(run_dir) -> dict[str, list[dict]]:
    tables = {"optimize": ("optimized", "rejected"), "generate": ("responses", "rejected"),
              "evaluate": ("judgments", "rejected")}
    return {f"{stage}/{name}": table(run_dir / stage, name) for stage, names in tables.items() for name in names}


def by(index: tuple[str, ...], rows: list[dict], *columns: str) -> dict[tuple, tuple]:
    # Not by key: the two runs' models are at different URLs, so their keys differ.
    return {tuple(r[c] for c in index): tuple(r[c] for c in columns) for r in rows}


def test_streamed_stages_overlap_and_match_the_stages_run_one_after_another(tmp_path):
    with Servers() as one_by_one:
        sequential = run_pipeline(pipeline(tmp_path, one_by_one, "sequential", stream=False))
        sequential_calls = one_by_one.calls()
    with Servers() as streamed_servers:
        streamed = run_pipeline(pipeline(tmp_path, streamed_servers, "streamed"))
        streamed_calls = streamed_servers.calls()
        # Every model at work at once: the judge answered before the optimizer's last reply.
        assert streamed_servers.judge.stats.ok_timestamps[0] < streamed_servers.optimizer.stats.ok_timestamps[-1]
    assert one_by_one.optimizer.stats.ok_timestamps[-1] < one_by_one.judge.stats.ok_timestamps[0]

    # The same model calls: nothing paid twice, nothing skipped.
    assert streamed_calls == sequential_calls == (21, 2 * (2 * 19 + 1), 2 * 2 * 20)
    a, b = outputs(tmp_path / "sequential"), outputs(tmp_path / "streamed")
    columns = {"optimize/optimized": (("id",), "optimized_prompt", "unchanged"),
               "generate/responses": (("id", "target"), "original_response", "optimized_response", "shared_response"),
               "evaluate/judgments": (("id", "target", "order"), "winner", "optimized_prompt", "original_response")}
    for name, (index, *values) in columns.items():
        assert len(b[name]) == len(a[name]) and by(index, b[name], *values) == by(index, a[name], *values), name
    for name in ("optimize/rejected", "generate/rejected", "evaluate/rejected"):
        assert sorted(r["id"] for r in b[name]) == sorted(r["id"] for r in a[name]), name
    assert [r["id"] for r in b["optimize/rejected"]] == ["empty"]
    assert {r["id"] for r in b["generate/rejected"]} == {"long"}  # generate's reader, after the stream
    for rows in b.values():
        assert len({r["key"] for r in rows}) == len(rows)

    stages = streamed["stages"]
    assert stages["optimize"]["rows_streamed"] == 22 and stages["optimize"]["rows_out"] == 21
    assert stages["generate"]["rows_streamed"] == 40 and stages["generate"]["rows_rejected"] == 2
    assert stages["evaluate"]["rows_streamed"] == 80 and stages["evaluate"]["requests"] == 80
    for stage in ("optimize", "generate", "evaluate"):
        s, q = stages[stage], sequential["stages"][stage]
        assert (s["rows_in"], s["rows_out"], s["rows_rejected"], s["requests"]) == \
            (q["rows_in"], q["rows_out"], q["rows_rejected"], q["requests"]), stage
        assert s["rows_in"] == s["rows_skipped"] + s["rows_out"] + s["rows_rejected"]
    assert stages["evaluate"]["overall"] == sequential["stages"]["evaluate"]["overall"]


def test_a_stream_resumes_what_an_earlier_run_left_between_stages(tmp_path):
    with Servers() as servers:
        cfg = pipeline(tmp_path, servers, "run")
        # An earlier run optimized the first 6 rows and stopped before generate.
        run_optimize(cfg.stage_configs()["optimize"].model_copy(update={"limit": 6}))
        first = run_pipeline(cfg)
        calls = servers.calls()
        again = run_pipeline(cfg)
        assert servers.calls() == calls  # a finished run makes no call
    assert calls == (21, 2 * (2 * 19 + 1), 2 * 2 * 20)
    stages = first["stages"]
    assert stages["optimize"]["rows_skipped"] == 6 and stages["optimize"]["rows_streamed"] == 16
    # The 6 rows optimized before: answered and judged by the jobs after the stream.
    assert stages["generate"]["rows_streamed"] == 2 * 14 and stages["generate"]["rows_out"] == 2 * 20
    assert stages["evaluate"]["rows_out"] == 80
    counts = collections.Counter((r["id"], r["target"], r["order"]) for r in table(tmp_path / "run" / "evaluate", "judgments"))
    assert len(counts) == 80 and set(counts.values()) == {1}
    for stage in ("optimize", "generate", "evaluate"):
        s = again["stages"][stage]
        assert s["rows_skipped"] == s["rows_in"] and s["rows_out"] == s["rows_rejected"] == 0, stage
