"""`bpo-ray demo`: the whole construct path on one laptop, no API key, no GPU.

A local Ray starts; Ray Serve puts the embedded SmolLM2-135M-Instruct behind the project's
OpenAI-compatible API; the construct job then calls that API over real HTTP (openai client,
rate limit, retries) for the bundled sample feedback, exactly as it would call OpenAI or vLLM.
"""

from __future__ import annotations

import os
from importlib.resources import files
from typing import Any

from rich.console import Console

from bpo_ray.construct.config import ConstructConfig
from bpo_ray.construct.job import run_construct
from bpo_ray.data.ledger import read_table
from bpo_ray.models.spec import EMBEDDED_MODEL, ModelSpec, RateLimit, Sampling
from bpo_ray.ray_utils import ensure_ray

DEMO_FEEDBACK = files("bpo_ray") / "demo_data" / "feedback.jsonl"
SERVER_NAME = "bpo-demo-model"


MIN_PAIRS_TO_TRAIN = 3  # one held out for validation, two workers with a row each


def run_demo(*, output: str = "runs/demo", port: int = 8011, limit: int | None = None,
             train: bool = True) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    ensure_ray()
    from bpo_ray.serve.model_server import start_model_server, stop_model_server

    steps = 3 if train else 2
    console.print(f"[bold]1/{steps}[/] serving the embedded model (SmolLM2-135M-Instruct) with Ray Serve …")
    url = start_model_server(ModelSpec(provider="local", model=EMBEDDED_MODEL, batch_size=16),
                             port=port, name=SERVER_NAME)
    console.print(f"     OpenAI-compatible API at {url}")
    try:
        console.print(f"[bold]2/{steps}[/] constructing optimized prompts from the sample feedback over HTTP …")
        cfg = ConstructConfig(
            input=[str(DEMO_FEEDBACK)],
            output=f"{output.rstrip('/')}/construct",
            limit=limit,
            model=ModelSpec(provider="openai", model=EMBEDDED_MODEL, base_url=url, supports_prefill=True,
                            concurrency=16, rate_limit=RateLimit(requests_per_s=100),
                            # A CPU batch of long prompts can take minutes on 2 cores.
                            timeout_s=600, sampling=Sampling(max_tokens=128)),
        )
        summary = run_construct(cfg)
    finally:
        stop_model_server(SERVER_NAME)
    _show_examples(console, cfg)
    if train:
        summary["train"] = _train_optimizer(console, cfg, output, summary["rows_out"] + summary["rows_skipped"])
    console.print(
        "[yellow]Note:[/] a 135M-parameter model is a weak prompt engineer: it rarely follows the full "
        "construction format, so most pairs come from the repair round and some rows are rejected "
        "with their reason (see rejected/). Point --base-url/--model at a strong model for real data."
    )
    return summary


def _train_optimizer(console: Console, construct: ConstructConfig, output: str, pairs: int) -> dict[str, Any]:
    """A few steps of the real training job (Ray Train + DeepSpeed ZeRO-2, 2 CPU workers)
    on the pairs just built: the whole path, not a useful optimizer at this size."""
    from bpo_ray.train.config import TrainConfig
    from bpo_ray.train.job import run_train

    if pairs < MIN_PAIRS_TO_TRAIN:
        console.print(f"[yellow]3/3 skipped:[/] {pairs} pairs; training needs at least {MIN_PAIRS_TO_TRAIN}")
        return {"skipped": f"{pairs} pairs < {MIN_PAIRS_TO_TRAIN}"}
    console.print("[bold]3/3[/] fine-tuning the embedded model on those pairs (Ray Train + DeepSpeed, 2 workers) …")
    # Checkpoints live in the demo's folder: deleting it starts the demo over, training included
    # (in ~/bpo-ray-runs a re-run would resume the finished run and train nothing).
    cfg = TrainConfig(input=[construct.output], output=f"{output.rstrip('/')}/optimizer", epochs=1,
                      max_length=256, val_size=1, logging_steps=1, deepspeed={"micro_batch_per_gpu": 2},
                      storage_path=f"{output.rstrip('/')}/train-runs", keep_checkpoints=1)
    result = run_train(cfg)
    console.print(f"     optimizer written to {cfg.output}")
    return {k: result.get(k) for k in ("finished", "rows_train", "rows_val", "step", "loss_first", "loss", "val_loss", "wall_s") if k in result}


def _show_examples(console: Console, cfg: ConstructConfig, n: int = 3) -> None:
    pairs = read_table(cfg.output, "pairs", cfg.output_format, columns=["prompt", "optimized_prompt"])
    if pairs is None:
        return
    for row in pairs.slice(0, n).to_pylist():
        console.print(f"[dim]prompt   [/] {row['prompt']}\n[green]optimized[/] {row['optimized_prompt']}\n")
