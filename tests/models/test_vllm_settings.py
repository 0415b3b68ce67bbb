"""What `provider: vllm` asks of vLLM and of Ray, without vLLM installed: engine arguments,
actor resources, the stage pool, the resume key. (The engine itself: tests/with_vllm.)"""

from __future__ import annotations

import pytest

from bpo_ray.models.resources import actor_resources
from bpo_ray.models.spec import ModelSpec
from bpo_ray.models.vllm_backend import CPU_MEMORY_SHARE, engine_args


def spec(**vllm) -> ModelSpec:
    return ModelSpec(provider="vllm", model="embedded", vllm=vllm)


def test_engine_args_follow_the_device_and_the_spec():
    cpu = engine_args(spec(), "/m", on_cpu=True)
    assert cpu["dtype"] == "float32" and cpu["gpu_memory_utilization"] == CPU_MEMORY_SHARE
    # Sampling comes from the spec alone, never from the checkpoint's generation_config.
    assert cpu["generation_config"] == "vllm" and cpu["model"] == cpu["tokenizer"] == "/m"
    assert "distributed_executor_backend" not in cpu and "max_model_len" not in cpu
    gpu = engine_args(spec(tensor_parallel_size=4, max_model_len=4096, max_num_seqs=128), "/m", on_cpu=False)
    assert gpu["dtype"] == "bfloat16" and gpu["gpu_memory_utilization"] == 0.9
    assert gpu["tensor_parallel_size"] == 4 and gpu["distributed_executor_backend"] == "mp"
    assert gpu["max_model_len"] == 4096 and gpu["max_num_seqs"] == 128
    explicit = ModelSpec(provider="vllm", dtype="float16", vllm={"gpu_memory_utilization": 0.5,
                                                                 "engine_kwargs": {"enable_prefix_caching": True}})
    args = engine_args(explicit, "/m", on_cpu=False)
    assert args["dtype"] == "float16" and args["gpu_memory_utilization"] == 0.5
    assert args["enable_prefix_caching"] is True


def test_an_engine_reserves_its_tensor_parallel_gpus():
    assert actor_resources(spec(tensor_parallel_size=2), cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 2}
    assert actor_resources(spec(tensor_parallel_size=2), cluster_gpus=0)["num_gpus"] == 0  # vLLM's CPU build
    assert actor_resources(ModelSpec(provider="local"), cluster_gpus=8)["num_gpus"] == 1


def test_stage_actors_keep_several_blocks_in_one_engine():
    from bpo_ray.runner import ENGINE_BLOCKS_IN_FLIGHT, StageJobConfig, _pool

    cfg = StageJobConfig(input=["x"], output="o")
    engine, local = _pool(spec(), cfg, blocks=10), _pool(ModelSpec(provider="local"), cfg, blocks=10)
    assert engine.max_concurrent_calls_per_actor == ENGINE_BLOCKS_IN_FLIGHT > 1
    assert local.max_tasks_in_flight_per_actor == 1 and local.max_concurrent_calls_per_actor is None


def test_engine_settings_stay_out_of_the_resume_key(tiny_model_dir):
    base = ModelSpec(provider="vllm", model=str(tiny_model_dir))
    faster = base.model_copy(update={"vllm": base.vllm.model_copy(update={"max_num_seqs": 8, "enforce_eager": True})})
    assert faster.fingerprint() == base.fingerprint()
    # A different engine may round differently: its rows are its own.
    assert ModelSpec(provider="local", model=str(tiny_model_dir)).fingerprint() != base.fingerprint()


def test_unknown_engine_setting_is_refused():
    with pytest.raises(ValueError, match="tensor_paralel_size"):
        spec(tensor_paralel_size=2)
