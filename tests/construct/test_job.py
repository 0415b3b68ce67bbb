"""The construct job end to end on a local Ray, against real HTTP servers and a real model."""

from __future__ import annotations

import json
import time

import pytest

from bpo_ray.construct.config import ConstructConfig
from bpo_ray.construct.job import run_construct
from bpo_ray.data.ledger import read_table
from bpo_ray.errors import InputError, ModelUnavailableError
from bpo_ray.testing.scripted_server import Fault, ScriptedOpenAIServer
from ports import dead_url  # tests/ is on sys.path (conftest)

pytestmark = pytest.mark.usefixtures("ray_local")


def instruction_of(body: dict) -> str:
    content = body["messages"][0]["content"]
    if "[Instruction]\n" not in content:  # the short repair request
        return content.rsplit("Instruction: ", 1)[1]
    return content.split("[Instruction]\n", 1)[1].split("\n\n[", 1)[0]


def good_reply(body: dict) -> str:
    if body["messages"][-1]["role"] == "assistant":  # a repair round with the tag pre-filled
        return f" {instruction_of(body)} Answer precisely."
    return f"Comparison: the preferred one is correct.\nOptimized Instruction: {instruction_of(body)} Answer precisely."


def config(out, url, inputs, **kw) -> ConstructConfig:
    model = {"provider": "openai", "model": "scripted", "base_url": url, "api_key_env": "BPO_TEST_KEY",
             "timeout_s": 1.0, "max_retries": 3, "concurrency": 8, **kw.pop("model", {})}
    return ConstructConfig(input=inputs, output=str(out), model=model, **kw)


def table(out, name) -> list[dict]:
    data = read_table(str(out), name, "parquet")
    return [] if data is None else data.to_pylist()


def test_faults_are_retried_and_every_row_is_accounted_for(tmp_path, fixture_data):
    faults = [Fault(status=429, retry_after=0.2), Fault(status=500), Fault(stall_s=2.0), Fault(malformed=True),
              Fault(content="I prefer the first answer."),  # no tag: goes to the repair round
              Fault(status=400)]  # not retryable: that row is rejected
    with ScriptedOpenAIServer(reply_fn=good_reply, script=faults) as srv:
        summary = run_construct(config(tmp_path, srv.base_url, [str(fixture_data / "feedback_24.json")], limit=24))
        assert srv.stats.requests == summary["requests"]
    assert summary["rows_in"] == 24
    assert summary["rows_out"] + summary["rows_rejected"] == 24
    assert summary["retries"] >= 4
    assert summary["rows_repaired"] >= 1
    pairs, rejected = table(tmp_path, "pairs"), table(tmp_path, "rejected")
    assert len(pairs) == summary["rows_out"] and len(rejected) == summary["rows_rejected"]
    assert len({p["id"] for p in pairs} | {r["id"] for r in rejected}) == 24
    assert any("HTTP 400" in r["reason"] for r in rejected)
    source = json.loads((fixture_data / "feedback_24.json").read_text())[:24]
    by_prompt = {s["instruction"]: s for s in source}
    for pair in pairs:
        assert pair["optimized_prompt"] == pair["prompt"] + " Answer precisely."
        assert pair["context"] == by_prompt[pair["prompt"]]["context"]
    assert json.loads((tmp_path / "summary.json").read_text())["rows_out"] == summary["rows_out"]


def test_rerun_resumes_and_pays_nothing(tmp_path, fixture_data):
    inputs = [str(fixture_data / "feedback_ctx.json"), str(fixture_data / "feedback_no_ctx.json")]
    with ScriptedOpenAIServer(reply_fn=good_reply) as srv:
        first = run_construct(config(tmp_path, srv.base_url, inputs))
        second = run_construct(config(tmp_path, srv.base_url, inputs, model={"concurrency": 3}))
        assert srv.stats.requests == first["requests"] == 4
    assert first["rows_out"] == 4
    assert second["rows_skipped"] == 4 and second["requests"] == 0 and second["rows_out"] == 0
    assert len(table(tmp_path, "pairs")) == 4


def test_api_that_dies_mid_run_leaves_retryable_rows_that_resume_completes(tmp_path, fixture_data):
    inputs = [str(fixture_data / "feedback_no_ctx.json")]
    # The probe passes (GET /v1/models), then every chat request fails with 503 until the
    # retries run out: transient, so the rows are rejected as retryable.
    with ScriptedOpenAIServer(reply_fn=good_reply, script=[Fault(status=503)] * 8) as srv:
        down = run_construct(config(tmp_path, srv.base_url, inputs, model={"max_retries": 1}))
    assert down["rows_rejected"] == down["rows_rejected_retryable"] == 2 and down["rows_out"] == 0
    assert all(r["reason"].startswith("model call failed: HTTP 503") for r in table(tmp_path, "rejected"))
    with ScriptedOpenAIServer(reply_fn=good_reply) as srv:
        up = run_construct(config(tmp_path, srv.base_url, inputs))
    assert up["rows_skipped"] == 0 and up["rows_out"] == 2


def test_repair_round_recovers_replies_without_the_tag(tmp_path, fixture_data):
    def chatty(body):
        if body["messages"][-1]["role"] == "assistant":
            return f" {instruction_of(body)} Be specific."
        return "Both answers are fine, but the first one is better."

    with ScriptedOpenAIServer(reply_fn=chatty) as srv:
        summary = run_construct(config(tmp_path, srv.base_url, [str(fixture_data / "feedback_no_ctx.json")],
                                       model={"supports_prefill": True}))
        repair_body = srv.stats.bodies[-1]
    assert summary["rows_out"] == 2 and summary["rows_repaired"] == 2 and summary["requests"] == 4
    assert repair_body["continue_final_message"] is True
    assert all(p["repaired"] and p["optimized_prompt"].endswith("Be specific.") for p in table(tmp_path, "pairs"))


def test_length_filter_and_bad_rows_are_rejected_with_reasons(tmp_path):
    rows = [
        {"id": "ok", "instruction": "Name a prime number.", "good_res": "7", "bad_res": "8"},
        {"id": "long", "instruction": "Hi", "good_res": "g", "bad_res": "b"},
        {"id": "nogood", "instruction": "Hi there", "bad_res": "b"},
        {"id": "empty", "instruction": "", "good_res": "g", "bad_res": "b"},
        {"id": "huge", "instruction": "x" * 1_000_000, "good_res": "g", "bad_res": "b"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with ScriptedOpenAIServer(reply_fn=good_reply) as srv:
        summary = run_construct(config(tmp_path / "out", srv.base_url, [str(path)]))
        assert srv.stats.requests == 2  # the three invalid rows never cost a request
    assert (summary["rows_in"], summary["rows_out"], summary["rows_rejected"]) == (5, 1, 4)
    reasons = {r["id"]: r["reason"] for r in table(tmp_path / "out", "rejected")}
    assert reasons["long"].startswith("length filter: optimized/original")
    assert "missing field good_res" in reasons["nogood"]
    assert reasons["empty"] == "empty instruction"
    assert reasons["huge"].startswith("input too long")


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "feedback.json"
    bad.write_text("<html>not json</html>")
    with ScriptedOpenAIServer(reply_fn=good_reply) as srv:
        with pytest.raises(InputError, match="feedback.json: not valid JSON"):
            run_construct(config(tmp_path / "out", srv.base_url, [str(bad)]))
        with pytest.raises(InputError, match="no such file"):
            run_construct(config(tmp_path / "out", srv.base_url, [str(tmp_path / "missing.json")]))


def test_jsonl_output_format(tmp_path, fixture_data):
    with ScriptedOpenAIServer(reply_fn=good_reply) as srv:
        cfg = config(tmp_path, srv.base_url, [str(fixture_data / "feedback_ctx.json")], output_format="jsonl")
        summary = run_construct(cfg)
        again = run_construct(cfg)  # resume reads the JSON Lines ledger too
    lines = [json.loads(line) for f in (tmp_path / "pairs").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(lines) == summary["rows_out"] == 2 and all(line["optimized_prompt"] for line in lines)
    assert again["rows_skipped"] == 2 and again["requests"] == 0


def test_local_tiny_model_end_to_end(tmp_path, fixture_data, tiny_model_dir):
    """The local transformers backend inside the actor pool: a random model writes garbage,
    so rows are rejected with a reason, but every row comes back and the tokens are counted."""
    cfg = ConstructConfig(input=[str(fixture_data / "feedback_no_ctx.json"), str(fixture_data / "feedback_ctx.json")],
                          output=str(tmp_path), model={"provider": "local", "model": str(tiny_model_dir),
                                                       "sampling": {"max_tokens": 8}}, cpus_per_actor=1)
    summary = run_construct(cfg)
    assert summary["rows_in"] == 4 and summary["rows_out"] + summary["rows_rejected"] == 4
    assert summary["completion_tokens"] > 0 and summary["requests"] >= 4
    for row in table(tmp_path, "rejected"):
        assert row["reason"] and row["construct_model"] == str(tiny_model_dir)


# --- failures that concern the whole job stop it, and mark no row ---

def test_api_answering_401_stops_the_job_with_no_rejected_rows(tmp_path, fixture_data, monkeypatch):
    monkeypatch.setenv("BPO_TEST_KEY", "wrong-key")
    with ScriptedOpenAIServer(reply_fn=good_reply, api_key="right-key") as srv:
        with pytest.raises(ModelUnavailableError, match=r"HTTP 401.*model.api_key_env \(BPO_TEST_KEY\)") as err:
            run_construct(config(tmp_path, srv.base_url, [str(fixture_data / "feedback_24.json")]))
        assert srv.stats.requests == 0  # the probe (GET /v1/models) caught it: no chat request paid
    assert "wrong-key" not in str(err.value)
    assert table(tmp_path, "rejected") == [] and table(tmp_path, "pairs") == []


def test_key_revoked_mid_run_stops_the_job_instead_of_rejecting_rows(tmp_path, fixture_data):
    # The probe passes, then chat requests answer 401: raised from inside the actors.
    with ScriptedOpenAIServer(reply_fn=good_reply, script=[Fault(status=401)] * 30) as srv:
        with pytest.raises(ModelUnavailableError, match="HTTP 401"):
            run_construct(config(tmp_path, srv.base_url, [str(fixture_data / "feedback_24.json")]))
    assert table(tmp_path, "rejected") == []


def test_unknown_model_stops_the_job(tmp_path, fixture_data):
    # Not in /v1/models, and a 1-token request answers 404: the model does not exist there.
    with ScriptedOpenAIServer(reply_fn=good_reply, model="another-model", script=[Fault(status=404)]) as srv:
        with pytest.raises(ModelUnavailableError, match=r"HTTP 404.*model.model \('scripted'\)"):
            run_construct(config(tmp_path, srv.base_url, [str(fixture_data / "feedback_no_ctx.json")]))
    assert table(tmp_path, "rejected") == []


def test_dead_api_stops_the_job_in_seconds(tmp_path, fixture_data):
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="model.base_url: .* does not answer"):
        run_construct(config(tmp_path, dead_url(), [str(fixture_data / "feedback_no_ctx.json")]))
    assert time.monotonic() - started < 15
    assert table(tmp_path, "rejected") == []


def test_missing_local_model_stops_the_job(tmp_path, fixture_data):
    cfg = ConstructConfig(input=[str(fixture_data / "feedback_no_ctx.json")], output=str(tmp_path / "out"),
                          model={"provider": "local", "model": str(tmp_path / "no-such-model")})
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="model.model: model folder not found"):
        run_construct(cfg)
    assert time.monotonic() - started < 15
    assert not (tmp_path / "out" / "rejected").exists()


def test_key_set_only_in_the_driver_after_ray_started_reaches_the_actors(tmp_path, fixture_data, monkeypatch):
    # ray_local started long before this variable existed: the actors' environments lack it.
    monkeypatch.setenv("BPO_LATE_KEY", "late-secret")
    with ScriptedOpenAIServer(reply_fn=good_reply, api_key="late-secret") as srv:
        summary = run_construct(config(tmp_path, srv.base_url, [str(fixture_data / "feedback_ctx.json")],
                                       model={"api_key_env": "BPO_LATE_KEY"}))
        assert srv.stats.unauthorized == 0
    assert summary["rows_out"] == 2
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"late-secret" not in path.read_bytes(), path


# --- resume keys cover everything that changes an output ---

def test_changing_the_prompt_or_repair_setting_reruns_rows(tmp_path, fixture_data, monkeypatch):
    from bpo_ray.construct import prompts

    inputs = [str(fixture_data / "feedback_no_ctx.json")]
    with ScriptedOpenAIServer(reply_fn=good_reply) as srv:
        first = run_construct(config(tmp_path, srv.base_url, inputs))
        same = run_construct(config(tmp_path, srv.base_url, inputs))
        no_repair = run_construct(config(tmp_path, srv.base_url, inputs, repair=False))
        monkeypatch.setattr(prompts, "_INTRO", prompts._INTRO + " Be brief.")
        new_prompt = run_construct(config(tmp_path, srv.base_url, inputs))
    assert first["rows_out"] == 2 and same["rows_skipped"] == 2
    assert no_repair["rows_skipped"] == 0 and no_repair["rows_out"] == 2
    assert new_prompt["rows_skipped"] == 0 and new_prompt["rows_out"] == 2


def test_rewritten_weights_rerun_rows(tmp_path, fixture_data, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = ConstructConfig(input=[str(fixture_data / "feedback_no_ctx.json")], output=str(tmp_path / "out"),
                          model={"provider": "local", "model": str(model), "sampling": {"max_tokens": 4}},
                          cpus_per_actor=1)
    first = run_construct(cfg)
    again = run_construct(cfg)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # "retrained": same bytes, rewritten file
    retrained = run_construct(cfg)
    assert first["rows_in"] == 2 and again["rows_skipped"] == 2
    assert retrained["rows_skipped"] == 0 and retrained["rows_out"] + retrained["rows_rejected"] == 2


def test_per_stage_usage_columns_with_declared_types(tmp_path, fixture_data):
    import pyarrow as pa

    with ScriptedOpenAIServer(reply_fn=good_reply) as srv:
        run_construct(config(tmp_path, srv.base_url, [str(fixture_data / "feedback_ctx.json")]))
    pairs = read_table(str(tmp_path), "pairs", "parquet")
    assert pairs.schema.field("construct_prompt_tokens").type == pa.int64()
    assert pairs.schema.field("construct_latency_s").type == pa.float64()
    assert pairs.schema.field("repaired").type == pa.bool_()
    assert all(t > 0 for t in pairs.column("construct_prompt_tokens").to_pylist())
    assert "prompt_tokens" not in pairs.column_names
