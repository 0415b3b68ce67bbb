"""A generate job killed with SIGKILL mid-run, then resumed: every (id, target) row exactly once,
and the resumed run asks the model only for the rows the killed one had not saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from bpo_ray.data.ledger import read_table
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.slow

ROWS = 150
RATE = 20.0  # requests/s: the job's own limit, so the kill lands mid-run


def answer(body: dict) -> str:
    return "ANSWER: " + body["messages"][-1]["content"]


def test_kill_9_then_resume_has_no_duplicates_and_no_repeated_calls(tmp_path, ray_local):
    data = tmp_path / "optimized.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Question {i}?",
                                        "optimized_prompt": f"Question {i}, answered step by step?"}) + "\n"
                            for i in range(ROWS)))
    out = tmp_path / "out"
    with ScriptedOpenAIServer(reply_fn=answer, latency_s=0.05) as srv:
        target = {"provider": "openai", "model": "scripted", "base_url": srv.base_url, "concurrency": 4,
                  "rate_limit": {"requests_per_s": RATE}}
        config = tmp_path / "generate.yaml"
        config.write_text(yaml.safe_dump({"input": [str(data)], "output": str(out), "flush_s": 1.0, "num_actors": 1,
                                          "ray_address": "local", "targets": [target]}))
        cmd = [sys.executable, "-m", "bpo_ray.cli", "generate", "--config", str(config)]
        proc = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while srv.stats.requests < 100 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the job ended before it could be killed"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            proc.wait()
        time.sleep(0.5)
        paid_before_kill = srv.stats.requests
        saved = read_table(str(out), "responses", "parquet")
        saved_rows = 0 if saved is None else saved.num_rows
        assert 0 < saved_rows < ROWS, saved_rows

        from bpo_ray.generate.config import GenerateConfig
        from bpo_ray.generate.job import run_generate

        resumed = run_generate(GenerateConfig.model_validate({**yaml.safe_load(config.read_text()), "ray_address": None,
                                                              "targets": [{**target, "rate_limit": {}}]}))
        late = srv.stats.requests - paid_before_kill - resumed["requests"]
    assert resumed["rows_skipped"] == saved_rows
    assert resumed["rows_in"] == ROWS == resumed["rows_skipped"] + resumed["rows_out"] + resumed["rows_rejected"]
    assert resumed["requests"] == 2 * (ROWS - saved_rows)  # nothing saved is asked again
    assert 0 <= late <= 8  # requests the killed driver had already written to its sockets
    rows = read_table(str(out), "responses", "parquet").to_pylist()
    assert sorted((r["id"], r["target"]) for r in rows) == sorted((f"r{i}", "scripted") for i in range(ROWS))
    assert all(r["optimized_response"] == f"ANSWER: {r['optimized_prompt']}" for r in rows)
