"""An evaluate job killed with SIGKILL mid-run re-pays only the judgments in flight plus a few
seconds of work; the resumed run finishes with every judgment once (counted by the server)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from killing import kill_after_requests  # tests/ is on sys.path (conftest)

from bpo_ray.data.ledger import read_table
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

PAIRS = 150  # 300 judgments
RATE = 20.0
FLUSH_S = 1.0
CONCURRENCY = 64
KILL_AFTER = 150
SLACK_S = 4.0  # as construct's kill test: blocks in answer, Ray's processes outliving the driver


def judged(body: dict) -> str:
    """Which judgment a request is: the question and which answer came first."""
    user = body["messages"][-1]["content"]
    question = re.search(r"\[Question\]\n(.*?)\n", user).group(1)
    first = "optimized" if "[Answer A]\nOptimized" in user else "original"
    return f"{question}|{first}"


def test_kill_9_of_evaluate_repays_only_what_was_in_flight(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?",
                                        "original_response": f"Original answer {i}.",
                                        "optimized_response": f"Optimized answer {i}."}) + "\n" for i in range(PAIRS)))
    out = tmp_path / "out"
    with ScriptedOpenAIServer(reply_fn=lambda body: "[[A]]", latency_s=0.05) as srv:
        config = tmp_path / "evaluate.yaml"
        config.write_text(
            f"input: [{data}]\noutput: {out}\nflush_s: {FLUSH_S}\nray_address: local\n"
            f"judge: {{provider: openai, model: scripted, base_url: '{srv.base_url}', concurrency: {CONCURRENCY},"
            f" rate_limit: {{requests_per_s: {RATE}}}}}\n")
        in_flight = kill_after_requests("evaluate", config, srv, KILL_AFTER)
        paid_first = {judged(body) for body in srv.stats.bodies}
        requests_first = srv.stats.requests
        saved = read_table(str(out), "judgments", "parquet")
        saved_rows = 0 if saved is None else saved.num_rows

        from bpo_ray.evaluate.config import EvaluateConfig
        from bpo_ray.evaluate.job import run_evaluate

        cfg = EvaluateConfig.model_validate({**yaml.safe_load(config.read_text()), "ray_address": None})
        resumed = run_evaluate(cfg)
        paid_again = [judged(body) for body in srv.stats.bodies[requests_first:]]

    repaid = len(paid_first.intersection(paid_again))
    print(f"paid before the kill: {requests_first} ({in_flight} in flight), saved: {saved_rows}, repaid: {repaid}")
    assert repaid <= in_flight + RATE * (FLUSH_S + SLACK_S), (requests_first, in_flight, saved_rows, repaid)
    assert len(paid_again) == len(set(paid_again)) == 2 * PAIRS - saved_rows
    assert resumed["rows_skipped"] == saved_rows
    keys = read_table(str(out), "judgments", "parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 2 * PAIRS
    assert resumed["overall"]["n"] == PAIRS and resumed["overall"]["tie"] == PAIRS  # always [[A]]: all flip


@pytest.fixture(autouse=True)
def _session_ray(ray_local):
    """The resumed run joins the session's Ray; the killed one ran its own."""
