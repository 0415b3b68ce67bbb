"""The `bpo-ray` command line as a user meets it (a real subprocess)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BPO_RAY = str(Path(sys.executable).with_name("bpo-ray"))


def run(*args):
    return subprocess.run([BPO_RAY, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_verbs():
    out = run("--help")
    assert out.returncode == 0
    for verb in ("construct", "train", "optimize", "generate", "sft-rewrite", "serve-model", "demo"):
        assert verb in out.stdout


def test_construct_help_shows_flags_and_defaults():
    out = run("construct", "--help")
    assert out.returncode == 0
    for flag in ("--input", "--output", "--model", "--base-url", "--api-key-env", "--concurrency", "--batch-size",
                 "--rate-limit", "--limit", "--config", "default: 16"):
        assert flag in out.stdout


def test_optimize_and_generate_help_show_their_flags():
    optimize = run("optimize", "--help").stdout
    for flag in ("--optimizer", "--template", "--mode", "--provider", "--prompt-field", "--context-field",
                 "--id-field", "--keep-all", "--min-similarity", "--concurrency", "bpo-llama2"):
        assert flag in optimize, flag
    generate = run("generate", "--help").stdout
    for flag in ("--target", "--base-url", "--provider", "--system-prompt", "--max-tokens"):
        assert flag in generate, flag


def test_unknown_provider_is_refused_naming_the_choices(tmp_path):
    out = run("optimize", "--input", "x.json", "--output", str(tmp_path), "--provider", "sglang")
    assert out.returncode == 2 and "local, openai, vllm" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_provider_without_vllm_says_how_to_install_it(tmp_path):
    data = Path(__file__).resolve().parent / "fixtures" / "feedback_no_ctx.json"
    out = run("optimize", "--input", str(data), "--output", str(tmp_path), "--provider", "vllm")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "needs vLLM" in out.stderr and "bpo-ray[vllm]" in out.stderr


def test_bad_setting_is_one_clear_line(tmp_path):
    out = run("construct", "--input", "x.json", "--output", str(tmp_path), "--concurrency", "0")
    assert out.returncode == 2
    assert "model.concurrency" in out.stderr and "Traceback" not in out.stderr


def test_missing_key_names_the_variable_not_the_key(tmp_path):
    data = Path(__file__).resolve().parent / "fixtures" / "feedback_no_ctx.json"
    out = subprocess.run([BPO_RAY, "construct", "--input", str(data), "--output", str(tmp_path),
                          "--base-url", "https://api.example.invalid/v1", "--model", "m",
                          "--api-key-env", "BPO_MISSING_KEY"],
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "BPO_MISSING_KEY" in out.stderr


def test_missing_model_folder_exits_2_with_one_line_and_no_rejected_rows(tmp_path):
    data = Path(__file__).resolve().parent / "fixtures" / "feedback_24.json"
    out = run("construct", "--input", str(data), "--output", str(tmp_path / "out"),
              "--model", str(tmp_path / "no-such-model"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model.model: model folder not found" in out.stderr
    assert not (tmp_path / "out" / "rejected").exists()


def test_train_bad_setting_fails_before_any_worker(tmp_path):
    out = run("train", "--input", "x.json", "--output", str(tmp_path), "--zero-stage", "5")
    assert out.returncode == 2 and "deepspeed.zero_stage" in out.stderr and "Traceback" not in out.stderr


def test_job_entry_points_share_the_cli(tmp_path):
    root = Path(__file__).resolve().parents[1]
    for job, flags, setting in (("train", ["--zero-stage", "5"], "deepspeed.zero_stage"),
                                ("construct", ["--concurrency", "0"], "model.concurrency"),
                                ("optimize", ["--mode", "wild"], "mode"),
                                ("generate", ["--target", "embedded", "--max-tokens", "0"], "targets.0.sampling.max_tokens"),
                                ("sft_rewrite", ["--concurrency", "0"], "target.concurrency")):
        out = subprocess.run([sys.executable, str(root / "jobs" / f"{job}.py"), "--input", "x.json",
                              "--output", str(tmp_path), *flags], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert setting in out.stderr, (job, out.stderr)


@pytest.mark.slow
def test_a_run_shows_its_progress_and_summary_and_keeps_library_info_in_its_log_file(tmp_path):
    from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

    def reply(body):
        return "Comparison: fine.\nOptimized Instruction: Explain it step by step."

    data = Path(__file__).resolve().parent / "fixtures" / "feedback_24.json"
    with ScriptedOpenAIServer(reply_fn=reply) as srv:
        out = subprocess.run([BPO_RAY, "construct", "--input", str(data), "--output", str(tmp_path / "out"),
                              "--base-url", srv.base_url, "--model", "scripted", "--ray-address", "local"],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    screen = out.stdout + out.stderr
    assert "construct: 24/24 rows" in screen and "rows_out" in screen
    for noise in ("execution finished", "Execution plan", "HTTP Request:", "Progress bars disabled"):
        assert noise not in screen, noise
    log = (tmp_path / "out" / "logs" / "construct.log").read_text()
    assert "execution finished" in log and "HTTP Request: GET" in log
