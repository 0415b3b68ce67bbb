"""The train job: pairs -> a fine-tuned prompt optimizer, on Ray Data + Ray Train + DeepSpeed.

Layout, top to bottom: check the settings and the base model (no cluster work yet), read and
tokenize the pairs on Ray Data (rejected rows set aside with their reason) and split them,
then one TorchTrainer with `num_workers` DeepSpeed workers, each reading its shard of the
train split, and finally the consolidated model from the last checkpoint into DIR.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bpo_ray.config import load_config
from bpo_ray.data.ledger import write_summary
from bpo_ray.data.rows import count_reasons
from bpo_ray.errors import BpoRayError, ConfigError
from bpo_ray.models.spec import EMBEDDED_MODEL
from bpo_ray.ray_utils import check_shared_path, run_on_ray
from bpo_ray.train.config import TrainConfig
from bpo_ray.train.data import check_rows, read_pairs, reason_counts, tokenize_and_split, write_rejected
from bpo_ray.train.deepspeed_config import build_deepspeed_config, resolve_precision
from bpo_ray.train.export import MODEL_SUBDIR, finish_output
from bpo_ray.train.loop import LoopConfig, micro_batches_per_epoch, total_optimizer_steps, train_loop_per_worker

log = logging.getLogger(__name__)

FINAL_METRICS = ("step", "epoch", "val_loss", "loss", "loss_first", "tokens_per_s", "peak_memory_mb")


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the job; returns (and writes to DIR/summary.json) the run's summary."""
    started = time.monotonic()
    model_path = resolve_base_model(cfg.base_model)
    summary = run_on_ray(cfg.ray_address, _run, cfg, model_path)
    summary["wall_s"] = round(time.monotonic() - started, 2)
    write_summary(cfg.output, summary)
    return summary


def _run(cfg: TrainConfig, model_path: str) -> dict[str, Any]:
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bpo_ray.train.tokenize import load_tokenizer, pad_id_of

    on_gpu = _use_gpu(cfg, ray.cluster_resources())
    # Workers on every node write checkpoints there and the driver reads them back: a folder
    # only one node sees fails here, not after the first epoch. `output` is the driver's
    # alone (it copies the model out of the last checkpoint), so any path of its own will do.
    check_shared_path(cfg.resolved_storage_path(), "storage_path")

    # Data: read, account for every row, tokenize, split. All before a worker starts.
    rows = read_pairs(cfg.input, cfg.fields, limit=cfg.limit).materialize()
    counts, reasons = reason_counts(rows)
    check_rows(counts, reasons, cfg.fields)
    splits = tokenize_and_split(rows, tokenizer_path=model_path, template=cfg.template,
                                max_length=cfg.max_length, val_size=cfg.val_size, seed=cfg.seed)
    rejected_path = write_rejected(cfg.output, splits.rejected)
    if splits.train_rows + splits.val_rows + len(splits.rejected) != splits.rows_in:
        raise BpoRayError(f"row accounting is off: {splits.rows_in} in, {splits.train_rows} train + "
                          f"{splits.val_rows} validation + {len(splits.rejected)} rejected")

    # Schedule and DeepSpeed config, from the data and the devices the cluster has.
    ds = cfg.deepspeed_for(on_gpu=on_gpu)
    per_epoch = micro_batches_per_epoch(splits.train_rows, cfg.num_workers, ds.micro_batch_per_gpu)
    if per_epoch == 0:
        raise ConfigError(f"num_workers: {cfg.num_workers} workers need at least {cfg.num_workers} "
                          f"training rows (got {splits.train_rows})")
    total_steps = total_optimizer_steps(per_epoch, cfg.epochs, ds.gradient_accumulation_steps)
    if total_steps == 0:
        raise ConfigError(f"deepspeed.gradient_accumulation_steps: {ds.gradient_accumulation_steps} micro-batches "
                          f"per optimizer step, but the run has only {per_epoch * cfg.epochs}")
    ds_config = build_deepspeed_config(ds, world_size=cfg.num_workers, on_gpu=on_gpu, total_steps=total_steps,
                                       warmup_ratio=cfg.warmup_ratio, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loop = LoopConfig(
        model_path=model_path, ds_config=ds_config, pad_id=pad_id_of(load_tokenizer(model_path)),
        epochs=cfg.epochs, total_steps=total_steps, micro_batches_per_epoch=per_epoch,
        micro_batch=ds.micro_batch_per_gpu,
        logging_steps=cfg.logging_steps, checkpoint_every_steps=cfg.checkpoint_every_steps,
        stop_after_steps=cfg.stop_after_steps, seed=cfg.seed, on_gpu=on_gpu,
        release_freed_memory=cfg.releases_freed_memory(on_gpu=on_gpu),
    )

    # The deployment: num_workers DeepSpeed ranks, each with its train shard and the whole
    # (small) validation split; checkpoints and run state under storage_path/run_name.
    run_name = cfg.resolved_run_name()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.to_dict(),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=on_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if on_gpu else {})},
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=run_name, storage_path=cfg.resolved_storage_path(),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": splits.train, "val": splits.val},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    finished = bool(metrics.get("finished"))

    if finished:
        with result.checkpoint.as_directory() as folder:
            finish_output(Path(folder) / MODEL_SUBDIR, cfg.output, template=cfg.template,
                          train_config={**cfg.model_dump(mode="json"), "deepspeed": ds.model_dump(mode="json"),
                                        "use_gpu": on_gpu, "run_name": run_name},
                          metrics={k: metrics[k] for k in FINAL_METRICS if metrics.get(k) is not None})

    return {
        "output": cfg.output,
        "finished": finished,
        "run_name": run_name,
        "storage_path": cfg.resolved_storage_path(),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "base_model": cfg.base_model,
        "device": "gpu" if on_gpu else "cpu",
        "precision": resolve_precision(ds.precision, on_gpu=on_gpu),
        "zero_stage": ds.zero_stage,
        "num_workers": cfg.num_workers,
        "placement_strategy": cfg.placement_strategy,
        "worker_nodes": metrics.get("worker_nodes"),
        "rows_in": splits.rows_in,
        "rows_train": splits.train_rows,
        "rows_val": splits.val_rows,
        "rows_rejected": len(splits.rejected),
        "reject_reasons": count_reasons(r["reason"] for r in splits.rejected),
        "rejected_file": rejected_path,
        "tokens": splits.train_tokens,
        "micro_batches_per_epoch": per_epoch,
        "total_steps": total_steps,
        "start_step": metrics.get("start_step", 0),
        **{k: metrics[k] for k in FINAL_METRICS if k in metrics},
    }


def _use_gpu(cfg: TrainConfig, resources: dict[str, float]) -> bool:
    """Whether to train on GPUs; an explicit True on a cluster without any fails here rather
    than leave the workers waiting for GPUs that never come."""
    gpus = resources.get("GPU", 0)
    if cfg.use_gpu is True and gpus < 1:
        raise ConfigError("use_gpu: true, but the Ray cluster has no GPUs; use 'auto' or false")
    if cfg.use_gpu == "auto":
        return gpus >= 1
    return bool(cfg.use_gpu)


def resolve_base_model(name: str) -> str:
    """The base model's folder (or hub id found in the local HF cache); fails naming
    `base_model` when it is neither, before any Ray work."""
    if name == EMBEDDED_MODEL:
        from bpo_ray.models.embedded import resolve_model_path

        return resolve_model_path(name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ConfigError(f"base_model: {folder} has no config.json; not a Hugging Face model folder")
        return str(folder.resolve())
    if folder.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or folder.exists():
        raise ConfigError(f"base_model: model folder not found: {folder.absolute()}")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model: {name!r} is not a local folder and not in the local Hugging Face "
                          f"cache ({type(exc).__name__})") from None
    return name


def train_from_cli(overrides: dict[str, Any], config_path: str | None) -> dict[str, Any]:
    """What `bpo-ray train` calls: YAML config (optional) plus dotted-key overrides (None
    values skipped), validated, then run."""
    return run_train(load_config(TrainConfig, config_path, overrides))
