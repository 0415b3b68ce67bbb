"""The generate job on a local Ray: several targets (a tiny local model and an HTTP API) answer
both prompts of every row; unchanged rows are answered once; optimize's output feeds it."""

from __future__ import annotations

import pytest
from outputs import table, write_jsonl  # tests/ is on sys.path (conftest)

from bpo_ray.generate.config import GenerateConfig
from bpo_ray.generate.job import run_generate
from bpo_ray.optimize.config import OptimizeConfig
from bpo_ray.optimize.job import run_optimize
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.usefixtures("ray_local")

CONTEXT = "The trail runs 12 km from the old mill to the harbour."
ROWS = [
    {"id": "a", "prompt": "owls?", "optimized_prompt": "Describe owls in detail.", "unchanged": False, "category": "qa"},
    {"id": "b", "prompt": "How long is it?", "context": CONTEXT, "optimized_prompt": "How long is the trail, in km?",
     "unchanged": False, "category": "closed_qa"},
    {"id": "c", "prompt": "Write a haiku.", "optimized_prompt": "Write a haiku.", "unchanged": True, "category": "poem"},
]




def answer(body: dict) -> str:
    return "ANSWER: " + body["messages"][-1]["content"]


def api_target(url: str, **kw) -> dict:
    return {"provider": "openai", "model": "scripted", "base_url": url, "name": "api", "max_retries": 1, **kw}


def test_two_targets_give_one_row_per_id_and_target(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "optimized.jsonl", ROWS)
    tiny = {"model": str(tiny_model_dir), "device": "cpu", "name": "tiny", "sampling": {"max_tokens": 6, "temperature": 0}}
    with ScriptedOpenAIServer(reply_fn=answer) as srv:
        summary = run_generate(GenerateConfig(input=[str(data)], output=str(tmp_path / "out"),
                                              targets=[tiny, api_target(srv.base_url)]))
        sent = [b["messages"][-1]["content"] for b in srv.stats.bodies]
        sampling = srv.stats.bodies[0]
    assert summary["rows_in"] == 6 and summary["rows_out"] == 6 and summary["rows_rejected"] == 0
    assert summary["rows_shared_response"] == 2  # row c, once per target
    rows = {(r["id"], r["target"]): r for r in table(tmp_path / "out", "responses")}
    assert set(rows) == {(i, t) for i in "abc" for t in ("tiny", "api")}
    # Both prompts joined with the context the same way; the unchanged row asked once.
    assert sorted(sent) == sorted(["owls?", "Describe owls in detail.", f"How long is it?\n\n{CONTEXT}",
                                   f"How long is the trail, in km?\n\n{CONTEXT}", "Write a haiku."])
    assert sampling["temperature"] == 0.7 and sampling["top_p"] == 1.0  # the paper's target sampling
    b = rows[("b", "api")]
    assert b["original_response"] == f"ANSWER: How long is it?\n\n{CONTEXT}"
    assert b["optimized_response"] == f"ANSWER: How long is the trail, in km?\n\n{CONTEXT}"
    assert b["generate_requests"] == 2 and not b["shared_response"] and b["category"] == "closed_qa"
    c = rows[("c", "api")]
    assert c["shared_response"] and c["original_response"] == c["optimized_response"] == "ANSWER: Write a haiku."
    assert c["generate_requests"] == 1
    tiny_a = rows[("a", "tiny")]
    assert tiny_a["generate_model"] == str(tiny_model_dir) and tiny_a["original_response"]
    assert tiny_a["original_finish_reason"] in ("stop", "length")


def test_rerun_skips_done_rows_and_a_new_target_adds_only_its_rows(tmp_path):
    data = write_jsonl(tmp_path / "optimized.jsonl", ROWS)
    out = str(tmp_path / "out")
    with ScriptedOpenAIServer(reply_fn=answer) as srv:
        run_generate(GenerateConfig(input=[str(data)], output=out, targets=[api_target(srv.base_url)]))
        assert srv.stats.requests == 5
        again = run_generate(GenerateConfig(input=[str(data)], output=out, targets=[
            api_target(srv.base_url), api_target(srv.base_url, name="api-cold", sampling={"temperature": 0})]))
        assert srv.stats.requests == 10  # only the new target's rows
    assert again["rows_in"] == 6 and again["rows_skipped"] == 3 and again["rows_out"] == 3
    assert len(table(tmp_path / "out", "responses")) == 6


def test_rows_without_an_optimized_prompt_are_rejected(tmp_path):
    data = write_jsonl(tmp_path / "mixed.jsonl", [ROWS[0], {"id": "x", "prompt": "Hi"},
                                                  {"id": "y", "prompt": "Hi", "optimized_prompt": 3}])
    with ScriptedOpenAIServer(reply_fn=answer) as srv:
        summary = run_generate(GenerateConfig(input=[str(data)], output=str(tmp_path / "out"),
                                              targets=[api_target(srv.base_url)]))
    assert summary["rows_in"] == 3 and summary["rows_out"] == 1 and summary["rows_rejected"] == 2
    reasons = {r["id"]: r["reason"] for r in table(tmp_path / "out", "rejected")}
    assert reasons == {"x": "row mixed.jsonl:1: missing field optimized_prompt",
                       "y": "row mixed.jsonl:2: int in field optimized_prompt"}


def test_optimize_output_folder_feeds_generate(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 7, "text": "Name a planet.", "category": "generic"}])
    with ScriptedOpenAIServer(reply_fn=lambda b: b["messages"][-1]["content"].split("\n\n", 1)[1] + " Explain why.") as opt, \
            ScriptedOpenAIServer(reply_fn=answer) as target:
        run_optimize(OptimizeConfig(input=[str(prompts)], output=str(tmp_path / "opt"), optimizer={
            "provider": "openai", "model": "scripted", "base_url": opt.base_url}))
        summary = run_generate(GenerateConfig(input=[str(tmp_path / "opt")], output=str(tmp_path / "gen"),
                                              targets=[api_target(target.base_url)]))
    assert summary["rows_out"] == 1
    (row,) = table(tmp_path / "gen", "responses")
    assert row["id"] == "7" and row["question_id"] == 7 and row["category"] == "generic"
    assert row["optimized_prompt"] == "Name a planet. Explain why."
    assert row["optimized_response"] == "ANSWER: Name a planet. Explain why."
    assert row["optimize_model"] == "scripted" and row["generate_model"] == "scripted"
