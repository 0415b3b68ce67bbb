"""The optimize job on a local Ray: real HTTP (the scripted server), real tiny models, the
train -> optimize round trip, the guards end to end, bad input, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from outputs import table, write_jsonl  # tests/ is on sys.path (conftest)

from bpo_ray.errors import InputError
from bpo_ray.optimize.config import OptimizeConfig
from bpo_ray.optimize.job import run_optimize
from bpo_ray.optimizer_template import DEFAULT_INSTRUCTION
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.usefixtures("ray_local")

ROWS = [
    {"id": "a", "prompt": "Tell me about owls."},
    {"id": "b", "prompt": "Summarize the text.", "context": "The trail runs 12 km from the old mill to the harbour."},
    {"id": "c", "prompt": "Write a haiku about rain."},
    {"id": "d", "prompt": "How long is the trail?", "context": "The trail runs 12 km from the old mill to the harbour."},
]




def http_config(tmp_path: Path, url: str, inputs: list[str], **kw) -> OptimizeConfig:
    optimizer = {"provider": "openai", "model": "scripted", "base_url": url, "max_retries": 1, "timeout_s": 5,
                 **kw.pop("optimizer", {})}
    return OptimizeConfig(input=inputs, output=str(tmp_path / "out"), optimizer=optimizer, **kw)


def user_text(body: dict) -> str:
    """The prompt (+ context) the optimizer was asked to rewrite, from a chat request."""
    return body["messages"][-1]["content"].split("\n\n", 1)[1]


def test_echoing_optimizer_leaves_prompts_unchanged_and_kept(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with ScriptedOpenAIServer(reply_fn=user_text) as srv:  # repeats prompt + context back
        summary = run_optimize(http_config(tmp_path, srv.base_url, [str(data)]))
        sent = srv.stats.bodies
    assert summary["rows_in"] == 4 and summary["rows_out"] == 4 and summary["rows_unchanged"] == 4
    rows = {r["id"]: r for r in table(tmp_path / "out", "optimized")}
    for source in ROWS:
        row = rows[source["id"]]
        assert row["unchanged"] and row["optimized_prompt"] == source["prompt"]
        assert row["unchanged_reason"] == "reply echoes the prompt"
        assert row["context"] == source.get("context", "")  # passed on untouched
    # The HTTP default is the chat layout: the instruction, then prompt + context, as one user turn.
    assert sent[0]["messages"][0]["content"].startswith(DEFAULT_INSTRUCTION)
    assert "prompt" not in sent[0]


def test_released_model_layout_over_completions_and_the_context_check(tmp_path):
    """The bpo-llama2 preset goes to /v1/completions as the paper's text; that model copies the
    context into its rewrite, so one without it has dropped the context and is rejected."""
    data = write_jsonl(tmp_path / "p.jsonl", ROWS)

    def reply(body: dict) -> str:
        text = body["prompt"].split("response:\n", 1)[1].removesuffix(" [/INST]")
        prompt, _, context = text.partition("\n")
        if "trail" in prompt:  # row d: keeps the context, with the instruction made precise
            return f"{prompt} Answer with the distance in km.\n{context}"
        return f"{prompt} Please be detailed and precise."  # drops row b's context

    with ScriptedOpenAIServer(reply_fn=reply) as srv:
        summary = run_optimize(http_config(tmp_path, srv.base_url, [str(data)], template="bpo-llama2",
                                           mode="greedy"))
        sent = {b["prompt"] for b in srv.stats.bodies}
    assert ("[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful "
            "and harmless response:\nHow long is the trail?\nThe trail runs 12 km from the old mill to the harbour. "
            "[/INST]") in sent
    assert summary["rows_in"] == summary["rows_out"] + summary["rows_rejected"] == 4
    assert summary["reject_reasons"] == {"context check": 1}
    (rejected,) = table(tmp_path / "out", "rejected")
    assert rejected["id"] == "b" and rejected["reason"] == "context check: the rewrite drops the context"
    rows = {r["id"]: r for r in table(tmp_path / "out", "optimized")}
    # The copy of the context is taken out of the rewrite: the context travels beside it.
    assert rows["d"]["optimized_prompt"] == "How long is the trail? Answer with the distance in km."
    assert rows["d"]["context"] == ROWS[3]["context"] and not rows["d"]["unchanged"]
    assert rows["a"]["optimized_prompt"] == "Tell me about owls. Please be detailed and precise."


def test_aggressive_mode_keeps_the_most_different_usable_candidate(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", ROWS[:1])
    candidates = ["Tell me about owls.",  # an echo
                  "Tell me about owls, please.",
                  "Describe owls: their habitats, diet, hunting and the species found in Europe.",
                  "x" * 500]  # fails the length filter
    with ScriptedOpenAIServer(reply_fn=lambda body: candidates) as srv:
        summary = run_optimize(http_config(tmp_path, srv.base_url, [str(data)], mode="aggressive", candidates=4,
                                           keep_all=True))
        assert srv.stats.bodies[0]["n"] == 4 and srv.stats.bodies[0]["temperature"] == 0.9
    assert summary["rows_out"] == 1
    (row,) = table(tmp_path / "out", "optimized")
    assert row["optimized_prompt"] == candidates[2] and row["mode"] == "aggressive"
    assert json.loads(row["candidates"]) == [candidates[2], candidates[1]]


def test_bad_rows_are_rejected_naming_row_and_field_and_counted(tmp_path):
    rows = [{"id": "ok", "prompt": "Name three rivers."}, {"id": "int", "prompt": 42},
            {"id": "empty", "prompt": "   "}, {"id": "turns", "prompt": ["First turn?", "Second turn."]},
            {"id": "none"}, "not an object"]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with ScriptedOpenAIServer(reply_fn=lambda body: user_text(body) + " Be brief.") as srv:
        summary = run_optimize(http_config(tmp_path, srv.base_url, [str(data)]))
        assert srv.stats.requests == 2  # rejected rows never reach the model
    assert summary["rows_in"] == 6 and summary["rows_out"] == 2 and summary["rows_rejected"] == 4
    reasons = {r["id"]: r["reason"] for r in table(tmp_path / "out", "rejected")}
    assert reasons["int"] == "row bad.jsonl:1: field prompt is int, not text or a list of turns"
    assert reasons["empty"] == "row bad.jsonl:2: empty prompt (field prompt)"
    assert reasons["none"].startswith("row bad.jsonl:4: missing field prompt")
    assert reasons["bad.jsonl:5"] == "row 5 is not an object"
    good = {r["id"]: r for r in table(tmp_path / "out", "optimized")}
    assert good["turns"]["optimized_prompt"] == "First turn? Be brief."
    # The other turns are kept; the field mixes text, a number and a list, so it is JSON text.
    assert json.loads(good["turns"]["input_prompt"]) == ["First turn?", "Second turn."]


def test_file_that_is_not_json_stops_the_job_naming_it(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"prompt": "a"},\n{"prompt": oops}]')
    with ScriptedOpenAIServer() as srv, pytest.raises(InputError, match=r"broken.json: not valid JSON \(line 2"):
        run_optimize(http_config(tmp_path, srv.base_url, [str(bad)]))


def test_rerun_resumes_and_a_new_mode_redoes(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with ScriptedOpenAIServer(reply_fn=lambda body: user_text(body).split("\n\n")[0] + " In detail.") as srv:
        first = run_optimize(http_config(tmp_path, srv.base_url, [str(data)]))
        again = run_optimize(http_config(tmp_path, srv.base_url, [str(data)]))
        assert srv.stats.requests == 4
        other = run_optimize(http_config(tmp_path, srv.base_url, [str(data)], mode="greedy"))
        assert srv.stats.requests == 8
    assert first["rows_out"] == 4 and again["rows_skipped"] == 4 and again["requests"] == 0
    assert other["rows_out"] == 4
    assert len(table(tmp_path / "out", "optimized")) == 8  # one row per (prompt, mode)


@pytest.mark.slow
def test_train_then_optimize_reproduces_the_memorized_rewrites(tmp_path, tiny_model_dir):
    """A tiny model trained by `bpo-ray train` on a few pairs, then optimize with its folder
    alone: the template comes from the folder's bpo_template.json and the greedy rewrites are
    the pairs it learned."""
    from bpo_ray.train.config import TrainConfig
    from bpo_ray.train.data import split_key
    from bpo_ray.train.job import run_train

    pairs = [{"prompt": "tell me a joke", "optimized_prompt": "Tell me a short, clean joke."},
             {"prompt": "how to cook rice", "optimized_prompt": "Explain rice cooking step by step."},
             {"prompt": "what is ai", "optimized_prompt": "Define AI in two sentences."}]
    train_data = write_jsonl(tmp_path / "pairs.jsonl", [{**p, "id": f"{i}-{k}"} for k in range(8)
                                                        for i, p in enumerate(pairs)])
    optimizer = tmp_path / "optimizer"
    cfg = TrainConfig(
        input=[str(train_data)], output=str(optimizer), base_model=str(tiny_model_dir), num_workers=1,
        use_gpu=False, epochs=20, lr=3e-3, warmup_ratio=0.1, max_length=96, val_size=2, logging_steps=8,
        checkpoint_every_steps=None, storage_path=str(tmp_path / "runs"),
        template={"style": "instruction", "instruction": "Rewrite:"},
        deepspeed={"zero_stage": 0, "micro_batch_per_gpu": 4})
    run_train(cfg)
    # Validation holds out whole pairs (every copy of one): the model learned the others.
    held_out = min(pairs, key=lambda p: split_key({**p, "context": ""}, cfg.seed))
    learned = [p for p in pairs if p is not held_out]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": str(i), "prompt": p["prompt"]} for i, p in enumerate(learned)])
    summary = run_optimize(OptimizeConfig(input=[str(prompts)], output=str(tmp_path / "out"), mode="greedy",
                                          optimizer={"model": str(optimizer), "device": "cpu",
                                                     "sampling": {"max_tokens": 48}}))
    assert summary["rows_out"] == len(learned) == 2, summary
    rows = {r["id"]: r for r in table(tmp_path / "out", "optimized")}
    assert [rows[str(i)]["optimized_prompt"] for i in range(2)] == [p["optimized_prompt"] for p in learned]


def test_files_with_different_columns_keep_all_of_them(tmp_path, fixture_data):
    inputs = [str(fixture_data / "testset_vicuna.jsonl"), str(fixture_data / "testset_dolly.json")]
    with ScriptedOpenAIServer(reply_fn=lambda body: user_text(body).split("\n\n")[0] + " In detail.") as srv:
        summary = run_optimize(http_config(tmp_path, srv.base_url, inputs))
    rows = table(tmp_path / "out", "optimized")
    assert summary["rows_in"] == len(rows) + summary["rows_rejected"] and summary["rows_rejected"] == 0
    vicuna = [r for r in rows if r["dataset"] == "testset_vicuna"]
    dolly = [r for r in rows if r["dataset"] == "testset_dolly"]
    assert vicuna and dolly
    assert all(isinstance(r["question_id"], int) and r["idx"] is None for r in vicuna)
    assert all(isinstance(r["idx"], int) and r["question_id"] is None and r["response"] for r in dolly)


def test_a_column_typed_differently_in_two_files_is_a_clear_error(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "One?", "tag": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "Two?", "tag": "x"}])
    with ScriptedOpenAIServer() as srv, pytest.raises(InputError, match="different types in different input files"):
        run_optimize(http_config(tmp_path, srv.base_url, [str(a), str(b)]))


def test_semantic_gate_rejects_a_rewrite_that_drifts_in_meaning(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"id": "bread", "prompt": "How do I bake bread at home?"},
                                              {"id": "drift", "prompt": "How do I fix a flat bicycle tyre?"}])

    def reply(body: dict) -> str:
        if "bread" in user_text(body):
            return "What is a simple, step-by-step way to bake bread in my home kitchen?"
        return "Explain the causes of the French Revolution in detail."

    with ScriptedOpenAIServer(reply_fn=reply) as srv:
        summary = run_optimize(http_config(tmp_path, srv.base_url, [str(data)],
                                           semantic_gate={"min_similarity": 0.5}))
    assert summary["rows_out"] == 1 and summary["reject_reasons"] == {"semantic gate": 1}
    (kept,) = table(tmp_path / "out", "optimized")
    assert kept["id"] == "bread" and kept["similarity"] > 0.5
    (rejected,) = table(tmp_path / "out", "rejected")
    assert rejected["id"] == "drift" and rejected["reason"].startswith("semantic gate: similarity 0.")
