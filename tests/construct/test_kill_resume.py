"""A construct job killed with SIGKILL mid-run re-pays only what was in flight plus the last
flush interval, not its whole unflushed buffer (the ledger flushes by time from a thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bpo_ray.data.ledger import read_table
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

ROWS = 300
RATE = 20.0  # requests/s: the job's own limit, so the kill lands mid-run at a known pace
FLUSH_S = 1.0
CONCURRENCY = 4


def reply(body: dict) -> str:
    if body["messages"][-1]["role"] == "assistant":
        return " Rewritten."
    content = body["messages"][0]["content"]
    instruction = content.split("[Instruction]\n", 1)[1].split("\n\n[", 1)[0]
    return f"Comparison: fine.\nOptimized Instruction: {instruction} Please explain step by step."


def test_kill_9_repays_only_the_last_seconds(tmp_path):
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"id": f"r{i}", "instruction": f"Explain topic number {i} to a student.",
                                            "good_res": "A clear answer.", "bad_res": "No."}) + "\n"
                                for i in range(ROWS)))
    out = tmp_path / "out"
    with ScriptedOpenAIServer(reply_fn=reply, latency_s=0.05) as srv:
        config = tmp_path / "construct.yaml"
        config.write_text(
            f"input: [{feedback}]\noutput: {out}\nflush_s: {FLUSH_S}\nnum_actors: 1\nray_address: local\n"
            f"model: {{provider: openai, model: scripted, base_url: '{srv.base_url}', concurrency: {CONCURRENCY},"
            f" rate_limit: {{requests_per_s: {RATE}}}}}\n")
        cmd = [sys.executable, "-m", "bpo_ray.cli", "construct", "--config", str(config)]
        env = {**os.environ, "RAY_ADDRESS": ""}
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while srv.stats.requests < 120 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the job ended before it could be killed"
            assert srv.stats.requests >= 120, "the job did not get going in time"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            proc.wait()
        time.sleep(0.5)  # requests already on the wire land in the server's count
        paid_before_kill = srv.stats.requests
        saved = read_table(str(out), "pairs", "parquet")
        saved_rows = 0 if saved is None else saved.num_rows

        # What was paid for but not saved: the rows in flight (at most two blocks of
        # CONCURRENCY rows) plus what finished during the last flush interval.
        lost = paid_before_kill - saved_rows
        print(f"paid before the kill: {paid_before_kill}, saved: {saved_rows}, paid and lost: {lost}")
        assert lost <= 2 * CONCURRENCY + RATE * FLUSH_S + 10, (paid_before_kill, saved_rows)

        from bpo_ray.construct.config import ConstructConfig
        from bpo_ray.construct.job import run_construct

        cfg = ConstructConfig.model_validate({**__import__("yaml").safe_load(config.read_text()),
                                              "ray_address": None, "model": {
                                                  "provider": "openai", "model": "scripted", "base_url": srv.base_url,
                                                  "concurrency": 16}})
        resumed = run_construct(cfg)
        assert resumed["rows_skipped"] == saved_rows
        assert resumed["rows_in"] == ROWS == resumed["rows_skipped"] + resumed["rows_out"] + resumed["rows_rejected"]
        assert srv.stats.requests - ROWS == lost  # the only rows paid twice are the lost ones


@pytest.fixture(autouse=True)
def _session_ray(ray_local):
    """The resumed run joins the session's Ray; the killed one ran its own."""
