"""Configs: YAML files in the repo validate; bad settings are named, all at once."""

from pathlib import Path

import pytest

from bpo_ray.config import load_config
from bpo_ray.construct.config import ConstructConfig
from bpo_ray.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("construct-*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_repo_configs_validate(path):
    cfg = load_config(ConstructConfig, path, {"input": ["x.jsonl"], "output": "out"})
    assert cfg.model.provider in {"openai", "local"}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("train-*.yaml")), ids=lambda p: p.name)
def test_repo_train_configs_validate(path):
    from bpo_ray.train.config import TrainConfig
    from bpo_ray.train.deepspeed_config import build_deepspeed_config

    cfg = load_config(TrainConfig, path, {"input": ["x.jsonl"], "output": "out"})
    on_gpu = cfg.use_gpu is not False
    ds = build_deepspeed_config(cfg.deepspeed_for(on_gpu=on_gpu), world_size=cfg.num_workers, on_gpu=on_gpu,
                                total_steps=100, warmup_ratio=cfg.warmup_ratio, lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
    assert ds["train_batch_size"] == cfg.deepspeed.micro_batch_per_gpu * cfg.num_workers


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("optimize-*.yaml")), ids=lambda p: p.name)
def test_repo_optimize_configs_validate(path):
    from bpo_ray.optimize.config import OptimizeConfig

    cfg = load_config(OptimizeConfig, path, {"input": ["x.jsonl"], "output": "out"})
    assert cfg.optimizer_spec().sampling.temperature == 0.6  # stable: the paper's sampling


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("generate-*.yaml")), ids=lambda p: p.name)
def test_repo_generate_configs_validate(path):
    from bpo_ray.generate.config import GenerateConfig

    cfg = load_config(GenerateConfig, path, {"input": ["x.jsonl"], "output": "out"})
    assert len({t.target_name() for t in cfg.targets}) == len(cfg.targets) >= 1


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("pipeline-*.yaml")), ids=lambda p: p.name)
def test_repo_pipeline_configs_validate(path):
    from bpo_ray.pipeline.config import PipelineConfig

    cfg = load_config(PipelineConfig, path, {"output": "runs/x"})
    stages = cfg.stage_configs()
    assert list(stages) == ["construct", "train", "optimize", "generate", "evaluate", "report"]
    # Each stage reads the one before, all under the run folder.
    assert stages["train"].input == ["runs/x/construct"] and stages["optimize"].optimizer.model == "runs/x/optimizer"
    assert stages["generate"].input == ["runs/x/optimize"] and stages["evaluate"].input == ["runs/x/generate"]
    assert stages["report"].input == ["runs/x/evaluate"]


def test_pipeline_errors_name_the_section(tmp_path):
    from bpo_ray.pipeline.config import PipelineConfig

    path = tmp_path / "p.yaml"
    path.write_text("output: out\noptimize: {input: [x.jsonl], mode: wild}\nevaluate: {orders: sometimes}\n")
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, path).stage_configs()
    assert "optimize.mode" in str(err.value) and "evaluate.orders" in str(err.value)


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: a.json\noutput: out\nmodel: {concurrency: 4, rate_limit: {requests_per_s: 5}}\n")
    cfg = load_config(ConstructConfig, path, {"model.rate_limit.requests_per_s": 9, "limit": None})
    assert cfg.input == ["a.json"] and cfg.model.concurrency == 4 and cfg.model.rate_limit.requests_per_s == 9


def test_every_bad_field_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: a.json\noutput: out\nmodel:\n  temperature_typo: 1\n  concurrency: 0\n"
                    "  rate_limit: {requests_per_s: -1}\nlimit: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(ConstructConfig, path)
    message = str(info.value)
    for field in ("model.temperature_typo", "model.concurrency", "model.rate_limit.requests_per_s", "limit"):
        assert field in message


def test_missing_required_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="input"):
        load_config(ConstructConfig, None, {"output": "out"})
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ConstructConfig, path)


def test_fingerprint_ignores_speed_settings_but_not_sampling():
    from bpo_ray.models import ModelSpec

    base = ModelSpec(provider="openai", model="m", base_url="http://x/v1")
    assert base.fingerprint() == base.model_copy(update={"concurrency": 99, "max_retries": 1}).fingerprint()
    hotter = ModelSpec(provider="openai", model="m", base_url="http://x/v1", sampling={"temperature": 0.7})
    assert base.fingerprint() != hotter.fingerprint()


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("serve-*.yaml")), ids=lambda p: p.name)
def test_repo_serve_configs_validate(path):
    import yaml

    from bpo_ray.serve.config import ServeConfig

    [application] = yaml.safe_load(path.read_text())["applications"]
    assert application["import_path"] == "bpo_ray.serve.graph:app"
    cfg = ServeConfig.model_validate(application["args"])
    for target in cfg.targets:
        spec = target.model_spec()
        options = target.deployment.options(spec, cluster_gpus=8)
        # On a GPU cluster a local or vLLM replica reserves its GPUs (an engine: its tensor-parallel ones).
        want = spec.vllm.tensor_parallel_size if spec.provider == "vllm" else 1
        assert options["ray_actor_options"]["num_gpus"] == want
