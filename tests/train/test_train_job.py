"""The train job end to end on a tiny random Llama: Ray Data -> Ray Train + DeepSpeed -> HF folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from bpo_ray.errors import BpoRayError, ConfigError
from bpo_ray.models.base import ChatRequest
from bpo_ray.optimizer_template import OptimizerTemplate
from bpo_ray.train.config import TrainConfig
from bpo_ray.train.job import run_train, train_from_cli

TEMPLATE = {"style": "chat", "instruction": "Rewrite:"}
PAIRS = [
    {"prompt": "tell me a joke", "optimized_prompt": "Tell me a short, clean joke."},
    {"prompt": "how to cook rice", "optimized_prompt": "Explain rice cooking step by step."},
    {"prompt": "what is ai", "optimized_prompt": "Define AI in two sentences."},
    {"prompt": "fix my code", "optimized_prompt": "Debug the code and explain the fix."},
]


@pytest.fixture(autouse=True)
def fast_train_polling(monkeypatch):
    """Ray Train's controller drains each worker's one-slot report queue every 2 s, so a
    report blocks until then: fine between real training steps, dominant in a tiny run.
    The driver passes this variable on to the controller it starts."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def base_config(tmp_path: Path, model_dir: Path, **overrides) -> dict:
    """Settings for a tiny, quick run: short targets, a short template, no warm-up wait."""
    data = write_jsonl(tmp_path / "pairs.jsonl",
                       [{**p, "id": f"{i}-{k}"} for k in range(6) for i, p in enumerate(PAIRS)])
    cfg = {
        "input": [str(data)], "output": str(tmp_path / "out"), "base_model": str(model_dir),
        "num_workers": 1, "use_gpu": False, "epochs": 2, "lr": 3e-3, "warmup_ratio": 0.1,
        "max_length": 96, "val_size": 2, "logging_steps": 2, "checkpoint_every_steps": None,
        "storage_path": str(tmp_path / "runs"), "template": TEMPLATE,
        "deepspeed": {"zero_stage": 0, "micro_batch_per_gpu": 4},
    }
    for key, value in overrides.items():
        if key == "deepspeed":
            cfg["deepspeed"] = {**cfg["deepspeed"], **value}
        else:
            cfg[key] = value
    return cfg


def param_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


# --- fast: bad settings fail before any worker starts ---


@pytest.mark.parametrize("override, setting", [
    ({"deepspeed": {"zero_stage": 5}}, "deepspeed.zero_stage"),
    ({"lr": -1e-5}, "lr"),
    ({"val_size": 1.5}, "val_size"),
    ({"base_model": "/nonexistent/model-folder"}, "base_model"),
])
def test_bad_settings_fail_before_ray(tmp_path, tiny_model_dir, override, setting):
    cfg = base_config(tmp_path, tiny_model_dir, **override)
    flat = {k: v for k, v in cfg.items() if k != "deepspeed"}
    flat.update({f"deepspeed.{k}": v for k, v in cfg["deepspeed"].items()})
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        train_from_cli(flat, None)


def test_stage_0_drops_the_default_offload_and_cpu_takes_torch_adam(tmp_path):
    cfg = TrainConfig(input=["x"], output=str(tmp_path), deepspeed={"zero_stage": 0})
    assert cfg.deepspeed.offload_optimizer is False
    cpu = TrainConfig(input=["x"], output=str(tmp_path)).deepspeed_for(on_gpu=False)
    assert cpu.torch_adam and not cpu.offload_optimizer and cpu.zero_stage == 2
    assert TrainConfig(input=["x"], output=str(tmp_path)).deepspeed_for(on_gpu=True).offload_optimizer


def test_schedule_counts_what_every_rank_runs():
    from bpo_ray.train.loop import micro_batches_per_epoch, total_optimizer_steps

    assert micro_batches_per_epoch(22, 2, 4) == 3  # 11 rows per rank after the equal split
    assert micro_batches_per_epoch(1, 2, 4) == 0
    assert total_optimizer_steps(3, 3, 2) == 4  # 9 micro-batches: the 9th closes no step


def test_accumulation_longer_than_the_run_fails(tmp_path, tiny_model_dir, ray_local):
    cfg = TrainConfig(**base_config(tmp_path, tiny_model_dir, epochs=1,
                                    deepspeed={"gradient_accumulation_steps": 64}))
    with pytest.raises(ConfigError, match="deepspeed.gradient_accumulation_steps"):
        run_train(cfg)


def test_run_name_follows_the_output(tmp_path):
    a = TrainConfig(input=["x"], output=str(tmp_path / "a")).resolved_run_name()
    assert a == TrainConfig(input=["x"], output=str(tmp_path / "a")).resolved_run_name()
    assert a != TrainConfig(input=["x"], output=str(tmp_path / "b" / "a")).resolved_run_name()


def test_missing_column_fails_naming_it(tmp_path, tiny_model_dir, ray_local):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": p["prompt"], "rewrite": "x"} for p in PAIRS])
    cfg = TrainConfig(**base_config(tmp_path, tiny_model_dir, input=[str(data)]))
    with pytest.raises(ConfigError, match="optimized_prompt.*fields.target"):
        run_train(cfg)


def test_empty_dataset_fails(tmp_path, tiny_model_dir, ray_local):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    with pytest.raises(ConfigError, match="input: no rows"):
        run_train(TrainConfig(**base_config(tmp_path, tiny_model_dir, input=[str(data)])))


def test_gpu_demanded_on_a_cpu_cluster_fails(tmp_path, tiny_model_dir, ray_local):
    with pytest.raises(ConfigError, match="use_gpu"):
        run_train(TrainConfig(**base_config(tmp_path, tiny_model_dir, use_gpu=True)))


def test_missing_input_fails(tmp_path, tiny_model_dir, ray_local):
    with pytest.raises(BpoRayError, match="input: .*no such file"):
        run_train(TrainConfig(**base_config(tmp_path, tiny_model_dir, input=[str(tmp_path / "nope.json")])))


# --- slow: real training runs ---


@pytest.mark.slow
def test_one_worker_memorizes_pairs_and_exports_a_loadable_model(tmp_path, tiny_model_dir, ray_local):
    from bpo_ray.models.local import TransformersBackend
    from bpo_ray.models.spec import ModelSpec

    cfg = TrainConfig(**base_config(tmp_path, tiny_model_dir, epochs=12, lr=1e-2, logging_steps=4,
                                    checkpoint_every_steps=1000))
    summary = run_train(cfg)
    out = Path(cfg.output)
    assert summary["finished"] and summary["rows_train"] + summary["rows_val"] + summary["rows_rejected"] == 24
    assert summary["loss"] < summary["loss_first"] / 4, summary
    assert summary["val_loss"] is not None
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "bpo_template.json", "README.md", "summary.json", "train_config.json"):
        assert (out / name).is_file(), name
    template = OptimizerTemplate.load(out)
    assert template.style == "chat"

    backend = TransformersBackend(ModelSpec(model=str(out), device="cpu", sampling={"max_tokens": 48}))
    pair = PAIRS[1]
    messages = [{"role": "user", "content": f"{template.instruction}\n\n{pair['prompt']}"}]
    (result,) = asyncio.run(backend.chat_batch([ChatRequest(messages=messages)]))
    assert result.error is None
    assert template.parse_output(result.texts[0]) == pair["optimized_prompt"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_workers_zero_export_matches_the_base(tmp_path, tiny_model_dir, ray_local, stage):
    """At a learning rate of ~0 the export must be the base model again: every rank loaded the
    real weights (ZeRO-3: partitioned while loading, under zero.Init) and the export gathered
    every partition back into place."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(**base_config(tmp_path, tiny_model_dir, num_workers=2, epochs=1, lr=1e-9,
                                    deepspeed={"zero_stage": stage}))
    summary = run_train(cfg)
    assert summary["finished"] and summary["zero_stage"] == stage and summary["num_workers"] == 2
    out = Path(cfg.output)
    assert param_shapes(out) == param_shapes(tiny_model_dir)
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert exported.keys() == base.keys()
    for name, tensor in base.items():
        assert torch.allclose(exported[name], tensor, atol=1e-5), name
    assert summary["peak_memory_mb"] > 100  # the highest rank's peak RSS, in MiB


@pytest.mark.slow
def test_resubmitting_the_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, ray_local):
    cfg = base_config(tmp_path, tiny_model_dir, epochs=2, checkpoint_every_steps=2, run_name="resume-me")
    first = run_train(TrainConfig(**cfg, stop_after_steps=3))
    assert not first["finished"] and first["start_step"] == 0 and first["step"] == 3
    assert not (Path(cfg["output"]) / "model.safetensors").exists()
    second = run_train(TrainConfig(**cfg))
    assert second["finished"] and second["start_step"] == 3
    assert second["step"] == second["total_steps"] > first["step"]


# --- fast: every input shape reads into the same rows; the split is deterministic ---


def test_reads_feedback_bpo_pairs_and_construct_output(tmp_path, fixture_data, tiny_model_dir, ray_local):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bpo_ray.train.config import PairFields
    from bpo_ray.train.data import read_pairs, reason_counts, tokenize_and_split

    construct = tmp_path / "constructed"
    (construct / "pairs").mkdir(parents=True)
    (construct / "rejected").mkdir()
    pq.write_table(pa.Table.from_pylist([
        {"id": "a", "key": "k1", "prompt": "p1", "context": "c1", "optimized_prompt": "o1", "model": "m"},
        {"id": "b", "key": "k2", "prompt": "p2", "context": "", "optimized_prompt": "o2", "model": "m"},
    ]), construct / "pairs" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "x", "reason": "r"}]), construct / "rejected" / "part-0.parquet")
    rows = read_pairs([str(fixture_data / "feedback_24.json"), str(fixture_data / "pairs_bpo_test.json"),
                       str(construct)], PairFields()).materialize()
    by_id = {r["id"]: r for r in rows.take_all()}
    assert len(by_id) == 24 + 6 + 2
    assert by_id["a"] == {"id": "a", "prompt": "p1", "context": "c1", "optimized_prompt": "o1",
                          "source": "part-0.parquet:0", "status": "ok", "reason": ""}
    with_context = [r for r in by_id.values() if r["source"].startswith("feedback") and r["context"]]
    assert with_context and all(r["optimized_prompt"] for r in with_context)
    counts, _ = reason_counts(rows)
    assert counts["ok"] + counts["rejected"] == 32

    def split():
        s = tokenize_and_split(rows, tokenizer_path=str(tiny_model_dir), template=OptimizerTemplate(),
                               max_length=1024, val_size=0.1, seed=3)
        assert s.train_rows + s.val_rows + len(s.rejected) == s.rows_in == 32
        return s

    first, second = split(), split()
    assert first.val_rows >= 3  # 10%, plus any duplicates of a held-out pair
    assert sorted(map(str, first.val.take_all())) == sorted(map(str, second.val.take_all()))


def test_unusable_rows_are_set_aside_with_a_reason(tmp_path, tiny_model_dir, ray_local):
    data = write_jsonl(tmp_path / "mixed.jsonl", [
        *[{**p, "id": str(i)} for i, p in enumerate(PAIRS)],
        {"id": "no-target", "prompt": "x"},
        {"id": "blank", "prompt": "   ", "optimized_prompt": "y"},
        {"id": "number", "prompt": 3, "optimized_prompt": "y"},
    ])
    cfg = TrainConfig(**base_config(tmp_path, tiny_model_dir, input=[str(data)], val_size=1))
    from bpo_ray.train.data import read_pairs, tokenize_and_split

    splits = tokenize_and_split(read_pairs(cfg.input, cfg.fields), tokenizer_path=str(tiny_model_dir),
                                template=cfg.template, max_length=cfg.max_length, val_size=1, seed=0)
    reasons = {r["id"]: r["reason"] for r in splits.rejected}
    assert set(reasons) == {"no-target", "blank", "number"}
    assert "missing field optimized_prompt" in reasons["no-target"]
    assert reasons["blank"] == "empty prompt" and "int" in reasons["number"]
    assert (splits.train_rows, splits.val_rows) == (3, 1)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_latest_checkpoint(tmp_path, tiny_model_dir, ray_local):
    import os
    import signal
    import threading
    import time

    import psutil

    cfg = TrainConfig(**base_config(tmp_path, tiny_model_dir, epochs=20, logging_steps=1,
                                    checkpoint_every_steps=3, max_failures=1, run_name="kill-me"))
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(run_train(cfg)), daemon=True)
    runner.start()
    run_dir = Path(cfg.storage_path) / "kill-me"
    snapshot = run_dir / "checkpoint_manager_snapshot.json"

    def registered() -> bool:
        # A checkpoint folder can exist before the controller has taken the report that
        # registers it; only the controller's snapshot says a restart will find it.
        try:
            return "checkpoint_" in snapshot.read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 120
    while not registered() and time.monotonic() < deadline:
        time.sleep(0.05)
    # Only this session's Ray (started by this process) is searched: never another's workers.
    workers = [p for p in psutil.Process(os.getpid()).children(recursive=True)
               if "RayTrainWorker" in " ".join(p.cmdline())]
    assert len(workers) == 1, workers
    os.kill(workers[0].pid, signal.SIGKILL)
    runner.join(timeout=240)
    assert outcome.get("finished"), outcome
    assert outcome["start_step"] > 0 and outcome["step"] == outcome["total_steps"]
