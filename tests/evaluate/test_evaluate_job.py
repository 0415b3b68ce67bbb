"""The evaluate job on a local Ray against a real HTTP judge (the scripted server): order
handling, repair, the cache, the budget, bad rows, logprob verdicts, and the local backend."""

from __future__ import annotations

import math
import re

import pytest
from outputs import table, write_jsonl  # tests/ is on sys.path (conftest)

from bpo_ray.evaluate.config import EvaluateConfig
from bpo_ray.evaluate.job import run_evaluate
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.usefixtures("ray_local")

# The optimized answer is the longer one in rows 0-5, the shorter one in rows 6-7.
PAIRS = [{"id": f"p{i}", "prompt": f"Question {i}?", "dataset": "vicuna_eval" if i < 4 else "dolly_eval",
          "target": "t1", "category": "generic",
          "original_response": "Short." if i < 6 else "A much longer original answer here.",
          "optimized_response": f"A longer, more complete answer number {i}." if i < 6 else "Brief."}
         for i in range(8)]


def answers(body: dict) -> tuple[str, str]:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    a = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", user, re.S).group(1)
    b = re.search(r"\[Answer B\]\n(.*?)\n\[End of answer B\]", user, re.S).group(1)
    return a, b


def always_a(body: dict) -> str:
    return "Answer A is better.\n[[A]]"


def longer(body: dict) -> str:
    if "model_1" in body["messages"][-1]["content"]:  # the ranking prompt: JSON in prose
        user = body["messages"][-1]["content"]
        one = re.search(r"\[model_1\]\n(.*?)\n\[End of model_1\]", user, re.S).group(1)
        two = re.search(r"\[model_2\]\n(.*?)\n\[End of model_2\]", user, re.S).group(1)
        first, second = (1, 2) if len(one) > len(two) else (2, 1)
        return f'Ranking: [{{"model": "model_{first}", "rank": 1}}, {{"model": "model_{second}", "rank": 2}}]'
    a, b = answers(body)
    return "[[A]]" if len(a) > len(b) else "[[B]]"


def judge(url: str, **kw) -> dict:
    # The server's own model name: the job's one-time check then only lists models.
    return {"provider": "openai", "model": "scripted", "base_url": url, "max_retries": 1, "concurrency": 8, **kw}


def run(tmp_path, url: str, out: str = "out", **kw) -> dict:
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        write_jsonl(data, PAIRS)
    kw.setdefault("judge", judge(url))
    return run_evaluate(EvaluateConfig(input=[str(data)], output=str(tmp_path / out), **kw))


def test_a_judge_that_always_says_a_gives_only_inconsistent_ties(tmp_path):
    with ScriptedOpenAIServer(reply_fn=always_a) as srv:
        summary = run(tmp_path, srv.base_url)
        requests = srv.stats.requests
    assert requests == 16  # 8 pairs x 2 orders
    assert summary["rows_in"] == 16 and summary["rows_out"] == 16 and summary["rows_rejected"] == 0
    overall = summary["overall"]
    assert (overall["n"], overall["win"], overall["tie"], overall["lose"]) == (8, 0, 8, 0)
    assert overall["inconsistent"] == 8 and overall["consistency"] == 0.0
    assert overall["delta_wr"] == 0.0
    rows = table(tmp_path / "out", "judgments")
    assert {(r["id"], r["order"]) for r in rows} == {(f"p{i}", o) for i in range(8)
                                                      for o in ("optimized_first", "original_first")}
    first = next(r for r in rows if r["order"] == "original_first")
    assert first["verdict"] == "A" and first["winner"] == "original" and first["evaluate_model"] == "scripted"
    # The judge saw the question and the answers, never the optimized prompt.
    assert set(summary["by_dataset"]) == {"vicuna_eval", "dolly_eval"} and set(summary["by_target"]) == {"t1"}


def test_a_judge_that_prefers_length_and_the_cache(tmp_path):
    with ScriptedOpenAIServer(reply_fn=longer) as srv:
        summary = run(tmp_path, srv.base_url)
        assert srv.stats.requests == 16
        again = run(tmp_path, srv.base_url)
        assert srv.stats.requests == 16  # the second run makes no model call
        ranked = run(tmp_path, srv.base_url, judge_prompt="ranking")
        assert srv.stats.requests == 32  # another judge prompt: every pair judged again
    overall = summary["overall"]
    assert (overall["win"], overall["tie"], overall["lose"], overall["inconsistent"]) == (6, 0, 2, 0)
    assert overall["win_rate"] == 0.75 and overall["delta_wr"] == 0.5 and overall["consistency"] == 1.0
    low, high = overall["delta_wr_ci95"]
    assert low <= 0.5 <= high
    assert overall["mean_len_optimized"] > overall["mean_len_original"]
    assert again["rows_skipped"] == 16 and again["overall"] == overall
    # The ranking judge's statistics cover its own judgments only, read as JSON.
    assert ranked["rows_skipped"] == 0 and ranked["judgments"] == 16 and ranked["judge_prompt"] == "ranking@1"
    assert (ranked["overall"]["win"], ranked["overall"]["lose"], ranked["overall"]["unparsed"]) == (6, 2, 0)
    keys = [r["key"] for r in table(tmp_path / "out", "judgments")]
    assert len(keys) == len(set(keys)) == 32  # no duplicates


def test_random_orders_are_seeded_and_reproducible(tmp_path):
    with ScriptedOpenAIServer(reply_fn=longer) as srv:
        one = run(tmp_path, srv.base_url, "r1", orders="random", seed=7)
        two = run(tmp_path, srv.base_url, "r2", orders="random", seed=7)
        other = run(tmp_path, srv.base_url, "r3", orders="random", seed=8)
    orders = {name: {r["id"]: r["order"] for r in table(tmp_path / name, "judgments")} for name in ("r1", "r2", "r3")}
    assert one["rows_out"] == 8 and len(orders["r1"]) == 8
    assert orders["r1"] == orders["r2"]
    assert orders["r1"] != orders["r3"]
    assert one["overall"]["consistency"] is None and (one["overall"]["win"], one["overall"]["lose"]) == (6, 2)
    assert two["overall"] == one["overall"] and other["overall"]["win"] == 6


def test_repair_round_and_unparsed_replies(tmp_path):
    def judge_reply(body: dict) -> str:
        if body["messages"][-1]["role"] == "user" and "did not end with a verdict" in body["messages"][-1]["content"]:
            return "[[B]]" if "Question 1?" in body["messages"][-3]["content"] else "I cannot decide."
        question = re.search(r"Question (\d)\?", body["messages"][-1]["content"]).group(1)
        return "[[A]]" if question not in "12" else "It depends on taste."

    with ScriptedOpenAIServer(reply_fn=judge_reply) as srv:
        summary = run(tmp_path, srv.base_url)
    rows = {(r["id"], r["order"]): r for r in table(tmp_path / "out", "judgments")}
    repaired = rows[("p1", "optimized_first")]
    assert repaired["repaired"] and repaired["verdict"] == "B" and "[repair] [[B]]" in repaired["judge_reply"]
    assert repaired["evaluate_requests"] == 2
    unparsed = rows[("p2", "optimized_first")]
    assert unparsed["repaired"] and unparsed["winner"] == "unparsed" and unparsed["verdict"] == ""
    assert summary["overall"]["unparsed"] == 1 and summary["overall"]["n"] == 8
    assert summary["judgments_repaired"] == 4  # p1 and p2, both orders


def test_budget_stops_cleanly_and_a_rerun_finishes(tmp_path):
    with ScriptedOpenAIServer(reply_fn=longer) as srv:
        capped = run(tmp_path, srv.base_url, max_tokens=1, num_actors=1,
                     judge=judge(srv.base_url, concurrency=2))
        paid = srv.stats.requests
        judged = capped["rows_out"]
        assert capped["budget_reached"] and 0 < judged < 16
        assert capped["judgments_not_judged"] == capped["rows_rejected"] == 16 - judged
        assert capped["rows_rejected_retryable"] == 16 - judged  # a re-run picks them up
        assert paid == judged
        rest = run(tmp_path, srv.base_url)
        assert srv.stats.requests == 16  # only what the capped run did not judge
    assert not rest["budget_reached"] and rest["rows_skipped"] == judged and rest["rows_out"] == 16 - judged
    keys = [r["key"] for r in table(tmp_path / "out", "judgments")]
    assert len(keys) == len(set(keys)) == 16
    assert rest["overall"]["win"] == 6 and rest["overall"]["n"] == 8


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    bad = [*PAIRS[:2], {"id": "x", "prompt": "Q?", "original_response": "a"},
           {"id": "y", "prompt": "Q?", "original_response": "a", "optimized_response": 3},
           {"id": "z", "original_response": "a", "optimized_response": "b"}]
    data = write_jsonl(tmp_path / "bad.jsonl", bad)
    with ScriptedOpenAIServer(reply_fn=longer) as srv:
        summary = run_evaluate(EvaluateConfig(input=[str(data)], output=str(tmp_path / "out"), judge=judge(srv.base_url)))
    assert summary["rows_in"] == 7 and summary["rows_out"] == 4 and summary["rows_rejected"] == 3
    reasons = {r["id"]: r["reason"] for r in table(tmp_path / "out", "rejected")}
    assert "missing field optimized_response" in reasons["x"]
    assert "int in field optimized_response" in reasons["y"]
    assert "missing field prompt" in reasons["z"]


def test_logprob_verdicts(tmp_path):
    def logprobs(body: dict) -> list[dict]:
        a, b = answers(body)
        p_a = 0.7 if len(a) > len(b) else 0.2
        top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in (("A", p_a), ("B", 0.9 - p_a), ("C", 0.1))]
        chosen = "A" if p_a > 0.5 else "B"
        return [{"token": "[[", "logprob": -0.01, "bytes": None, "top_logprobs": []},
                {"token": chosen, "logprob": math.log(max(p_a, 0.9 - p_a)), "bytes": None, "top_logprobs": top}]

    with ScriptedOpenAIServer(reply_fn=lambda body: "[[?]]", logprobs_fn=logprobs) as srv:
        summary = run(tmp_path, srv.base_url, verdict="logprobs")
        body = srv.stats.bodies[0]
    assert body["logprobs"] is True and body["max_tokens"] <= 8
    assert "verdict only" in body["messages"][-1]["content"]
    rows = table(tmp_path / "out", "judgments")
    winner = next(r for r in rows if r["id"] == "p0" and r["order"] == "original_first")
    assert winner["winner"] == "optimized" and winner["p_optimized"] == pytest.approx(0.7)
    assert winner["p_tie"] == pytest.approx(0.1)
    assert (summary["overall"]["win"], summary["overall"]["lose"]) == (6, 2)
