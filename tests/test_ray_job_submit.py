"""`ray job submit` of the jobs to a real head started here, as a cluster user would: construct,
then optimize on its output, generate on optimize's, evaluate on generate's, and the report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ports import free_port  # tests/ is on sys.path (conftest)

from bpo_ray.optimizer_template import DEFAULT_INSTRUCTION
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def reply(body: dict) -> str:
    """One scripted API for the three jobs: construction requests, optimizer requests (the chat
    layout: instruction, blank line, prompt), and target requests (anything else)."""
    content = body["messages"][0]["content"]
    if "impartial judge" in content:  # evaluate's pairwise judge (its system message)
        return "Answer B is better. [[B]]"
    if "[Instruction]\n" in content:
        instruction = content.split("[Instruction]\n", 1)[1].split("\n\n[", 1)[0]
        return f"Comparison: ok\nOptimized Instruction: {instruction} Please be thorough."
    if content.startswith(DEFAULT_INSTRUCTION):
        return content.split("\n\n", 2)[1] + " Answer step by step."
    return f"ANSWER: {content}"


@pytest.fixture
def ray_head():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray 2.60's dashboard wants a token: token mode on both ends, the token in ~/.ray.
    env["RAY_AUTH_MODE"] = "token"
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, env=env)
    gcs, dashboard = free_port(), free_port()
    # Every fixed default port moved: the test session's own Ray already holds them
    # (a head whose dashboard agent cannot bind 52365 answers "No available agent").
    own_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    # Short path: Ray's Unix sockets live under it and must stay within 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="bpo-ray-", dir="/tmp")
    # --block and a session of its own, so teardown stops this head only: `ray stop` would
    # kill every Ray process on the machine, the test session's own cluster included.
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dashboard}",
                             "--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats",
                             f"--temp-dir={temp_dir}", *own_ports], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(address: str, env: dict, job: str, *args: str) -> subprocess.CompletedProcess:
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
               "--runtime-env-json", json.dumps({"env_vars": {"HF_HUB_OFFLINE": "1"}}),
               "--", sys.executable, f"jobs/{job}.py", *args]
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
        # The head is still coming up: dashboard not listening yet, or its job agent not ready.
        starting = any(s in done.stderr + done.stdout for s in ("No available agent", "Connection refused",
                                                               "Failed to connect", "ConnectionError"))
        if done.returncode == 0 or not starting or time.monotonic() > deadline:
            return done
        time.sleep(3)


@pytest.mark.slow
def test_jobs_via_ray_job_submit(ray_head, tmp_path, fixture_data):
    address, env = ray_head
    with ScriptedOpenAIServer(reply_fn=reply) as srv:
        api = ["--base-url", srv.base_url]
        job = submit(address, env, "construct", "--input", str(fixture_data / "feedback_ctx.json"),
                     "--input", str(fixture_data / "feedback_no_ctx.json"), "--output", str(tmp_path / "pairs"),
                     *api, "--model", "scripted", "--rate-limit", "10")
        served = srv.stats.requests
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in (job.stdout + job.stderr)
        summary = json.loads((tmp_path / "pairs" / "summary.json").read_text())
        assert summary["rows_in"] == 4 and summary["rows_out"] == 4 and summary["requests"] == served == 4
        assert len(list((tmp_path / "pairs" / "pairs").glob("*.parquet"))) >= 1

        job = submit(address, env, "optimize", "--input", str(tmp_path / "pairs"), "--output", str(tmp_path / "opt"),
                     *api, "--optimizer", "scripted")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        optimized = json.loads((tmp_path / "opt" / "summary.json").read_text())
        assert optimized["rows_in"] == 4 and optimized["rows_out"] == 4

        job = submit(address, env, "generate", "--input", str(tmp_path / "opt"), "--output", str(tmp_path / "gen"),
                     *api, "--target", "scripted")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        generated = json.loads((tmp_path / "gen" / "summary.json").read_text())
        assert generated["rows_in"] == 4 and generated["rows_out"] == 4 and generated["requests"] == 8

        job = submit(address, env, "evaluate", "--input", str(tmp_path / "gen"), "--output", str(tmp_path / "eval"),
                     *api, "--judge", "scripted")
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())
        # The judge always says B: every pair flips with the order, so every pair is a tie.
        assert evaluated["rows_out"] == 8 and evaluated["overall"]["tie"] == 4 and evaluated["overall"]["inconsistent"] == 4

        job = submit(address, env, "report", "--input", str(tmp_path / "eval"), "--output", str(tmp_path / "report"))
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "0.0 / 100.0 / 0.0" in (tmp_path / "report" / "report.md").read_text()

        # The pipeline from one config, starting from an optimizer behind the API.
        api_model = {"provider": "openai", "model": "scripted", "base_url": srv.base_url}
        config = tmp_path / "pipeline.yaml"
        config.write_text(json.dumps({  # JSON is YAML
            "output": str(tmp_path / "run"),
            "optimize": {"input": [str(fixture_data / "testset_vicuna.jsonl")], "optimizer": api_model},
            "generate": {"targets": [{**api_model, "name": "t"}]},
            "evaluate": {"judge": api_model}}))
        job = submit(address, env, "pipeline", "--config", str(config))
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(run["stages"]) == ["optimize", "generate", "evaluate", "report"]
    rows = run["stages"]["optimize"]["rows_out"]
    assert rows > 0 and run["stages"]["evaluate"]["rows_out"] == 2 * rows
    assert (tmp_path / "run" / "report" / "report.md").is_file()
