"""`provider: vllm` through the batch stages on a local Ray: optimize, generate and evaluate on
the embedded model, each stage actor holding its own vLLM engine (vLLM's CPU build)."""

from __future__ import annotations

import time

import pytest
from outputs import table, write_jsonl  # tests/ is on sys.path (conftest)

from bpo_ray.evaluate.config import EvaluateConfig
from bpo_ray.evaluate.job import run_evaluate
from bpo_ray.generate.config import GenerateConfig
from bpo_ray.generate.job import run_generate
from bpo_ray.optimize.config import OptimizeConfig
from bpo_ray.optimize.job import run_optimize

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

ROWS = [
    {"id": "a", "prompt": "Tell me about owls."},
    {"id": "b", "prompt": "Write a haiku about rain."},
    {"id": "c", "prompt": "How do I boil an egg?"},
    {"id": "d", "prompt": "Summarize the text.", "context": "The trail runs 12 km from the old mill to the harbour."},
    {"id": "e", "prompt": "Give me three tips for a job interview."},
    {"id": "f", "prompt": "What is photosynthesis?"},
    {"id": "g", "prompt": ""},  # rejected by the reader: input rows = output rows + rejected rows
]


def test_optimize_generate_evaluate_on_vllm(tmp_path, vllm_spec):
    data = write_jsonl(tmp_path / "prompts.jsonl", ROWS)
    engine = vllm_spec().model_dump()
    local = {"provider": "local", "model": "embedded"}

    # optimize: greedy, so the vLLM optimizer must write exactly what transformers writes.
    runs = {}
    for name, optimizer in {"vllm": engine, "local": local}.items():
        runs[name] = run_optimize(OptimizeConfig(input=[str(data)], output=str(tmp_path / f"opt-{name}"),
                                                 optimizer={**optimizer, "sampling": {"max_tokens": 64}},
                                                 mode="greedy"))
    summary = runs["vllm"]
    assert summary["rows_in"] == 7 and summary["rows_out"] + summary["rows_rejected"] == 7
    got = {r["id"]: r for r in table(tmp_path / "opt-vllm", "optimized")}
    want = {r["id"]: r for r in table(tmp_path / "opt-local", "optimized")}
    assert got.keys() == want.keys() and len(got) >= 3
    # The same rows fail the guards for the same reasons (the empty prompt at the reader).
    rejected = lambda name: {r["id"]: r["reason"] for r in table(tmp_path / name, "rejected")}  # noqa: E731
    assert rejected("opt-vllm") == rejected("opt-local") and "g" in rejected("opt-vllm")
    for key, row in got.items():
        assert row["optimized_prompt"] == want[key]["optimized_prompt"]
        assert row["optimize_model"] == "embedded"
        assert row["optimize_completion_tokens"] == want[key]["optimize_completion_tokens"] > 0

    # generate: a vLLM target answers both prompts of each optimized row.
    target = {**engine, "name": "smol-vllm", "sampling": {"temperature": 0, "max_tokens": 48}}
    gen = run_generate(GenerateConfig(input=[str(tmp_path / "opt-vllm")], output=str(tmp_path / "gen"),
                                      targets=[target]))
    assert gen["rows_out"] + gen["rows_rejected"] == gen["rows_in"] == len(got)
    answers = table(tmp_path / "gen", "responses")
    assert len(answers) == gen["rows_out"] >= 3
    for row in answers:
        assert row["target"] == "smol-vllm"
        assert row["original_response"].strip() and row["optimized_response"].strip()

    # evaluate: a vLLM judge with logprob verdicts always gives one, from P(A), P(B), P(C).
    judge = {**engine, "sampling": {"temperature": 0, "max_tokens": 8}}
    ev = run_evaluate(EvaluateConfig(input=[str(tmp_path / "gen")], output=str(tmp_path / "eval"),
                                     judge=judge, verdict="logprobs"))
    assert ev["rows_out"] + ev["rows_rejected"] + ev["rows_skipped"] == ev["rows_in"]
    judged = table(tmp_path / "eval", "judgments")
    assert len(judged) == ev["rows_out"] >= 3
    assert {row["winner"] for row in judged} <= {"optimized", "original", "tie"}  # never unparsed
    for row in judged:
        assert row["p_optimized"] + row["p_original"] + row["p_tie"] == pytest.approx(1.0, abs=1e-4)
        assert row["evaluate_model"] == "embedded"


def test_a_dead_engine_mid_job_restarts_its_actor_and_loses_no_row(tmp_path, vllm_spec):
    """The engine's core process is killed once the first rows are written: the stage actor
    sees its backend dead, exits, Ray Data restarts it (a new engine) and retries its blocks.
    Every row ends written once, none rejected as retryable."""
    import threading

    import psutil

    rows = [{"id": f"r{i}", "prompt": f"Tell me something about the number {i}."} for i in range(40)]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "out"
    seen: set[int] = set()
    killed: list[int] = []
    done = threading.Event()

    def engine_cores() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                if "EngineCore" in " ".join(p.info["cmdline"] or []) + (p.info["name"] or "") and \
                        "ray::" in " ".join(p.parent().cmdline()):
                    found.append(p)
            except (psutil.Error, AttributeError):
                continue
        return found

    def watch() -> None:
        while not done.is_set():
            cores = engine_cores()
            seen.update(p.pid for p in cores)
            if not killed and cores and any((out / "optimized").glob("part-*")):
                for p in cores:
                    p.kill()
                    killed.append(p.pid)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_optimize(OptimizeConfig(
            input=[str(data)], output=str(out), mode="greedy", flush_s=0.5,
            optimizer={**vllm_spec().model_dump(), "batch_size": 4, "sampling": {"max_tokens": 48}}))
    finally:
        done.set()
        watcher.join()
    assert killed, "the engine was never killed: the job ended before its first flush"
    assert len(seen - set(killed)) >= 1  # a new engine came up in the restarted actor
    assert summary["rows_in"] == 40 and summary["rows_out"] + summary["rows_rejected"] == 40
    assert summary["rows_rejected_retryable"] == 0
    written = [r["id"] for r in table(out, "optimized")] + [r["id"] for r in table(out, "rejected")]
    assert sorted(written) == sorted(r["id"] for r in rows)  # each row once
