"""The DeepSpeed config built from typed settings: ZeRO sections, precision, batch and schedule."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from bpo_ray.config import load_config
from bpo_ray.errors import ConfigError
from bpo_ray.train.deepspeed_config import (
    CPU_BUCKET_ELEMENTS, DeepSpeedConfigError, DeepSpeedSettings, build_deepspeed_config, warmup_steps,
)

PAPER = dict(total_steps=1000, warmup_ratio=0.1, lr=2e-5, weight_decay=0.01)


def build(on_gpu: bool = False, world_size: int = 1, **settings):
    return build_deepspeed_config(DeepSpeedSettings(**settings), world_size=world_size, on_gpu=on_gpu, **PAPER)


def test_defaults_are_the_papers_recipe():
    cfg = build(on_gpu=True, world_size=8)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["train_batch_size"] == 32
    assert cfg["zero_optimization"] == {
        "stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
    }
    assert cfg["optimizer"] == {"type": "AdamW", "params": {
        "lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}}
    assert cfg["scheduler"] == {"type": "WarmupDecayLR", "params": {
        "total_num_steps": 1000, "warmup_min_lr": 0.0, "warmup_max_lr": 2e-5, "warmup_num_steps": 100,
        "warmup_type": "linear"}}
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["gradient_clipping"] == 1.0 and cfg["wall_clock_breakdown"] is False
    assert cfg["steps_per_print"] >= 10**6
    json.dumps(cfg)  # written beside the model as the run's record


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_section_per_stage(stage):
    cfg = build(zero_stage=stage, offload_optimizer=stage > 0)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == (stage > 0)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    assert "offload_param" not in zero
    if stage > 0:
        assert zero["overlap_comm"] is False  # CPU: nothing to overlap with


@pytest.mark.parametrize("on_gpu", [False, True])
@pytest.mark.parametrize("offload_optimizer, offload_params", [(False, False), (True, False), (False, True), (True, True)])
def test_offload_combinations_on_stage_3(on_gpu, offload_optimizer, offload_params):
    zero = build(on_gpu=on_gpu, zero_stage=3, offload_optimizer=offload_optimizer,
                 offload_params=offload_params)["zero_optimization"]
    expected = {"device": "cpu", "pin_memory": on_gpu}
    assert zero.get("offload_optimizer") == (expected if offload_optimizer else None)
    assert zero.get("offload_param") == (expected if offload_params else None)


def test_bad_settings_name_the_setting():
    with pytest.raises(ValidationError, match="zero_stage"):
        DeepSpeedSettings(zero_stage=5)
    with pytest.raises(ValidationError, match="offload_params needs zero_stage 3"):
        DeepSpeedSettings(zero_stage=2, offload_params=True)
    with pytest.raises(ValidationError, match="offload_optimizer needs zero_stage"):
        DeepSpeedSettings(zero_stage=0, offload_optimizer=True)
    for field, value in [("gradient_accumulation_steps", 0), ("gradient_clipping", 0.0),
                         ("micro_batch_per_gpu", 0), ("precision", "fp8"), ("offload_nvme", True)]:
        with pytest.raises(ValidationError, match=field):
            DeepSpeedSettings(**{field: value})


def test_settings_errors_through_load_config_name_the_field():
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(DeepSpeedSettings, overrides={"zero_stage": 5})
    assert load_config(DeepSpeedSettings, overrides={"zero_stage": 3, "offload_params": True}).offload_params


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_cpu_is_refused(precision):
    with pytest.raises(ValueError, match=f"precision: '{precision}' needs a GPU"):
        build(precision=precision)
    assert build(on_gpu=True, precision=precision)[precision] == {"enabled": True}


def test_precision_auto_and_fp32():
    cpu = build(precision="auto")
    assert cpu["bf16"] == {"enabled": False} and cpu["fp16"] == {"enabled": False}
    gpu_fp32 = build(on_gpu=True, precision="fp32")
    assert gpu_fp32["bf16"] == {"enabled": False} and gpu_fp32["fp16"] == {"enabled": False}


def test_bad_training_arguments_are_reported_together():
    settings = DeepSpeedSettings()
    with pytest.raises(DeepSpeedConfigError) as info:
        build_deepspeed_config(settings, world_size=0, on_gpu=False, total_steps=0, warmup_ratio=1.5,
                               lr=-2e-5, weight_decay=-1.0)
    message = str(info.value)
    for name in ("world_size", "total_steps", "warmup_ratio", "lr:", "weight_decay"):
        assert name in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)
    with pytest.raises(ValueError, match="lr"):
        build_deepspeed_config(settings, world_size=1, on_gpu=False, total_steps=10, warmup_ratio=0.1,
                               lr=float("nan"), weight_decay=0.0)


@pytest.mark.parametrize("micro, accum, world", [(4, 1, 8), (4, 3, 8), (1, 1, 1), (2, 16, 3)])
def test_train_batch_size_is_micro_times_accumulation_times_world(micro, accum, world):
    cfg = build(world_size=world, micro_batch_per_gpu=micro, gradient_accumulation_steps=accum)
    assert cfg["train_batch_size"] == micro * accum * world
    assert cfg["train_micro_batch_size_per_gpu"] == micro and cfg["gradient_accumulation_steps"] == accum


@pytest.mark.parametrize("total, ratio, expected", [(1000, 0.1, 100), (95, 0.1, 10), (10, 0.1, 1), (50, 0.0, 1)])
def test_warmup_is_ten_percent_rounded_up(total, ratio, expected):
    assert warmup_steps(total, ratio) == expected
    cfg = build_deepspeed_config(DeepSpeedSettings(), world_size=1, on_gpu=False, total_steps=total,
                                 warmup_ratio=ratio, lr=1e-4, weight_decay=0.0)
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == expected
    assert cfg["scheduler"]["params"]["total_num_steps"] == total


def test_torch_adam_is_passed_to_deepspeed():
    params = build(torch_adam=True)["optimizer"]["params"]
    assert params["torch_adam"] is True and params["fused"] is True
    assert "torch_adam" not in build()["optimizer"]["params"]
    assert "fused" not in build()["optimizer"]["params"]  # DeepSpeed's own Adams take no such key


def test_deepspeed_accepts_every_config():
    """deepspeed 0.19.8 parses each variant (no engine, no process group: world size 1)."""
    import deepspeed  # noqa: F401  (a core dependency: must import)
    from deepspeed.runtime.config import DeepSpeedConfig

    variants = [dict(zero_stage=0, offload_optimizer=False), dict(zero_stage=1), dict(zero_stage=2),
                dict(zero_stage=2, offload_optimizer=False, gradient_accumulation_steps=4),
                dict(zero_stage=3, offload_params=True), dict(zero_stage=3, offload_optimizer=False)]
    for on_gpu in (False, True):
        for variant in variants:
            cfg = build(on_gpu=on_gpu, **variant)
            parsed = DeepSpeedConfig(cfg)
            zero = parsed.zero_config
            assert parsed.train_batch_size == cfg["train_batch_size"]
            assert parsed.zero_optimization_stage == variant["zero_stage"]
            assert parsed.bfloat16_config.enabled is on_gpu
            assert parsed.gradient_clipping == 1.0
            assert parsed.optimizer_name == "adamw" and parsed.scheduler_name == "WarmupDecayLR"
            offloaded = zero.offload_optimizer is not None and zero.offload_optimizer.device == "cpu"
            assert offloaded == variant.get("offload_optimizer", True)
            assert (zero.offload_param is not None) == variant.get("offload_params", False)
            if variant["zero_stage"] == 3:
                assert zero.gather_16bit_weights_on_model_save
            if variant["zero_stage"] > 0:
                # The CPU buckets reach DeepSpeed under the names it reads; GPUs keep its defaults.
                assert (zero.reduce_bucket_size == CPU_BUCKET_ELEMENTS) is not on_gpu
                if variant["zero_stage"] == 3:
                    assert (zero.prefetch_bucket_size == CPU_BUCKET_ELEMENTS) is not on_gpu
                    assert (zero.max_reuse_distance == 0) is not on_gpu
                else:
                    assert (zero.allgather_bucket_size == CPU_BUCKET_ELEMENTS) is not on_gpu


def test_the_schedule_warms_up_linearly_then_decays_to_zero():
    """DeepSpeed's own WarmupDecayLR, driven by the generated params over a one-tensor AdamW."""
    import deepspeed  # noqa: F401  (a core dependency: must import)
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    lr = 2e-5
    cfg = build_deepspeed_config(DeepSpeedSettings(), world_size=1, on_gpu=False, total_steps=100,
                                 warmup_ratio=0.1, lr=lr, weight_decay=0.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = WarmupDecayLR(optimizer, **cfg["scheduler"]["params"])
    lrs = []
    for _ in range(101):
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(lr / 2)  # linear, not DeepSpeed's default log warm-up
    assert lrs[10] == pytest.approx(lr) and max(lrs) == pytest.approx(lr)
    assert lrs[55] == pytest.approx(lr / 2)
    assert lrs[100] == 0.0
