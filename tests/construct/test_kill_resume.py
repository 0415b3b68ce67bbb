"""A construct job killed with SIGKILL mid-run re-pays only the requests in flight at the kill
plus a few seconds of work, also at a high concurrency: HTTP blocks are a few rows each (a
block's rows reach the ledger when its last row is answered), and the ledger flushes by time
from a thread. Paid requests are counted by the server, row by row."""

from __future__ import annotations

import json

import pytest
import yaml
from killing import kill_after_requests  # tests/ is on sys.path (conftest)

from bpo_ray.data.ledger import read_table
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

ROWS = 300
RATE = 20.0  # requests/s: the job's own limit, so the kill lands mid-run at a known pace
FLUSH_S = 1.0
# The default pool (2 actors) at a high concurrency: with blocks of `concurrency` rows, two in
# flight per actor, a kill here once re-paid every row (measured: 166 of 166).
CONCURRENCY = 64
KILL_AFTER = 150  # paid requests
# Seconds of work besides the last flush interval that a kill may re-pay: the blocks being
# answered, the finished ones on their way to the driver, and Ray's own processes, which
# outlive a SIGKILLed driver by about 2 s and keep sending (measured here: 37 requests).
SLACK_S = 4.0


def reply(body: dict) -> str:
    if body["messages"][-1]["role"] == "assistant":
        return " Rewritten."
    return f"Comparison: fine.\nOptimized Instruction: {instruction(body)} Please explain step by step."


def instruction(body: dict) -> str:
    return body["messages"][0]["content"].split("[Instruction]\n", 1)[1].split("\n\n[", 1)[0]


def test_kill_9_repays_only_what_was_in_flight(tmp_path):
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"id": f"r{i}", "instruction": f"Explain topic number {i} to a student.",
                                            "good_res": "A clear answer.", "bad_res": "No."}) + "\n"
                                for i in range(ROWS)))
    out = tmp_path / "out"
    with ScriptedOpenAIServer(reply_fn=reply, latency_s=0.05) as srv:
        config = tmp_path / "construct.yaml"
        config.write_text(
            f"input: [{feedback}]\noutput: {out}\nflush_s: {FLUSH_S}\nray_address: local\n"
            f"model: {{provider: openai, model: scripted, base_url: '{srv.base_url}', concurrency: {CONCURRENCY},"
            f" rate_limit: {{requests_per_s: {RATE}}}}}\n")
        in_flight = kill_after_requests("construct", config, srv, KILL_AFTER)
        paid_first = {instruction(body) for body in srv.stats.bodies}
        requests_first = srv.stats.requests
        saved = read_table(str(out), "pairs", "parquet")
        saved_rows = 0 if saved is None else saved.num_rows

        from bpo_ray.construct.config import ConstructConfig
        from bpo_ray.construct.job import run_construct

        cfg = ConstructConfig.model_validate({**yaml.safe_load(config.read_text()), "ray_address": None, "model": {
            "provider": "openai", "model": "scripted", "base_url": srv.base_url, "concurrency": 16}})
        resumed = run_construct(cfg)
        paid_again = [instruction(body) for body in srv.stats.bodies[requests_first:]]

    repaid = len(paid_first.intersection(paid_again))
    print(f"paid by the killed run: {requests_first} ({in_flight} in flight at the kill), saved: {saved_rows}, "
          f"paid again: {repaid}")
    assert repaid <= in_flight + RATE * (FLUSH_S + SLACK_S), (requests_first, in_flight, saved_rows, repaid)
    assert len(paid_again) == len(set(paid_again)) == ROWS - saved_rows  # each missing row once
    assert resumed["rows_skipped"] == saved_rows

    # The ledger after both runs: every row once, rows in = out + rejected.
    pairs = read_table(str(out), "pairs", "parquet")
    rejected = read_table(str(out), "rejected", "parquet")
    keys = pairs.column("key").to_pylist() + ([] if rejected is None else rejected.column("key").to_pylist())
    assert len(keys) == len(set(keys)) == ROWS
    assert resumed["rows_in"] == ROWS == resumed["rows_skipped"] + resumed["rows_out"] + resumed["rows_rejected"]


@pytest.fixture(autouse=True)
def _session_ray(ray_local):
    """The resumed run joins the session's Ray; the killed one ran its own."""
