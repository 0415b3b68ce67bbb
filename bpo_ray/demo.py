"""`bpo-ray demo`: the whole BPO pipeline on one laptop, no API key, no GPU.

It is `bpo-ray pipeline --config configs/pipeline-demo.yaml`: a local Ray; the embedded
SmolLM2-135M-Instruct constructs (prompt, optimized prompt) pairs from the project's sample
feedback, is fine-tuned on them into the optimizer (Ray Train + DeepSpeed), rewrites the
project's sample prompts, answers both versions as the target and judges them; the report's
main table closes the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpo_ray.errors import ConfigError

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline-demo.yaml"


def run_demo(*, output: str = "runs/demo", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    import os

    from bpo_ray.config import load_config
    from bpo_ray.pipeline.config import PipelineConfig
    from bpo_ray.pipeline.run import run_pipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded model is on disk; never wait on the hub
    if not DEMO_CONFIG.is_file():
        raise ConfigError(f"{DEMO_CONFIG} not found: run the demo from a checkout of the repository, or use "
                          "`bpo-ray pipeline --config FILE`")
    return run_pipeline(load_config(PipelineConfig, DEMO_CONFIG, {"output": output, **(overrides or {})}))
