"""Settings of the train job (YAML keys; CLI flags override them).

Defaults follow the BPO paper: 3 epochs, lr 2e-5 with 10% linear warm-up then linear decay,
micro-batch 4, max length 512, loss on the optimized prompt and EOS only.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bpo_ray.config import Paths
from bpo_ray.models.spec import EMBEDDED_MODEL
from bpo_ray.optimizer_template import OptimizerTemplate
from bpo_ray.train.deepspeed_config import DeepSpeedSettings

DEFAULT_STORAGE = "~/bpo-ray-runs"


class PairFields(BaseModel):
    """Input field names; each entry lists names tried in order (the first present wins)."""

    model_config = ConfigDict(extra="forbid")

    id: list[str] = Field(["id", "idx", "question_id"], description="Row id fields (optional).")
    prompt: list[str] = Field(["prompt", "instruction"], min_length=1, description="The user's prompt.")
    context: list[str] = Field(["context"], description="Context fields (optional).")
    target: list[str] = Field(["optimized_prompt"], min_length=1, description="The optimized prompt (training target).")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: Paths = Field(..., min_length=1, description="Pairs: a construct output folder (DIR/pairs), or JSON, JSONL, Parquet files or folders.")
    output: str = Field(..., description="Folder for the trained model (HF format), its template, README.md and summary.json: a path or a URI (s3://, gs://, file://).")
    base_model: str = Field(EMBEDDED_MODEL, description="Model to fine-tune: HF id, local folder, or 'embedded'.")
    num_workers: int = Field(2, ge=1, description="Training workers (one GPU each when GPUs are used).")
    use_gpu: Literal["auto", True, False] = Field("auto", description="Train on GPUs: auto uses them when the cluster has any.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each training worker reserves.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How Ray places the workers: PACK fills a node first (fewest nodes, fastest "
        "collectives), SPREAD one per node where it can; the STRICT_ forms fail rather than bend.")
    release_freed_memory: Literal["auto", True, False] = Field(
        "auto", description="CPU workers: return freed tensors to the OS at once (glibc mmap threshold 128 KiB), so "
        "memory follows what training holds; costs 10-25% step time. auto: on for ZeRO-3 on CPU, off otherwise.")
    epochs: int = Field(3, ge=1, description="Passes over the training split.")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (after warm-up).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the optimizer steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(512, ge=8, description="Most tokens per example; the prompt is shortened before the target.")
    val_size: int | float = Field(0.05, description="Held-out rows: a count (int) or a fraction (float in (0, 1)); at least 1 row.")
    seed: int = Field(0, description="Seed of the split, the shuffle and the model's dropout.")
    logging_steps: int = Field(10, ge=1, description="Report loss, lr, tokens/s and memory every N optimizer steps.")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps (default: at each epoch's end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept in storage (the latest ones).")
    max_failures: int = Field(1, ge=-1, description="Worker failures to recover from (from the latest checkpoint); -1: no limit.")
    stop_after_steps: int | None = Field(None, ge=1, description="End this submission after N optimizer steps (checkpointed, no export); submit the same run again to continue.")
    run_name: str | None = Field(None, description="Ray Train run name; re-submitting the same name resumes (default: derived from output).")
    storage_path: str = Field(DEFAULT_STORAGE, description="Where Ray Train keeps run state and checkpoints (shared storage or a URI on a multi-node cluster).")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings, description="ZeRO stage, offload, precision, batch and clipping.")
    template: OptimizerTemplate = Field(default_factory=OptimizerTemplate, description="How a prompt is laid out for the optimizer; saved beside the weights.")
    fields: PairFields = Field(default_factory=PairFields, description="Input field names.")
    limit: int | None = Field(None, ge=1, description="Use only the first N input rows.")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, value: int | float) -> int | float:
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"a fraction must be in (0, 1) (got {value}); give a whole number for a row count")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a row count must be >= 1 (got {value})")
        return value

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"use letters, digits, '.', '_' and '-' only (got {value!r})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_offload_at_stage_0(cls, data):
        # The paper's default offloads the optimizer (ZeRO-2); `--zero-stage 0` alone should
        # still work, so stage 0 drops the offload unless the user asked for it explicitly.
        if isinstance(data, dict) and isinstance(data.get("deepspeed"), dict):
            ds = data["deepspeed"]
            if ds.get("zero_stage") == 0 and "offload_optimizer" not in ds:
                data = {**data, "deepspeed": {**ds, "offload_optimizer": False}}
        return data

    def deepspeed_for(self, *, on_gpu: bool) -> DeepSpeedSettings:
        """The DeepSpeed settings for the device found at run time.

        On CPU, offloading to CPU buys nothing and DeepSpeed's C++ Adam is compiled on first
        use (minutes on a small machine): use torch's AdamW in place, unless the user chose.
        """
        ds = self.deepspeed
        if on_gpu:
            return ds
        update = {}
        if "torch_adam" not in ds.model_fields_set:
            update["torch_adam"] = True
        if "offload_optimizer" not in ds.model_fields_set:
            update["offload_optimizer"] = False
        return ds.model_copy(update=update)

    def releases_freed_memory(self, *, on_gpu: bool) -> bool:
        """Whether workers pin glibc's mmap threshold (bpo_ray.train.memory). auto: for ZeRO-3
        on CPU, which frees and re-gathers every layer each step and is chosen to save memory."""
        if self.release_freed_memory == "auto":
            return not on_gpu and self.deepspeed.zero_stage == 3
        return bool(self.release_freed_memory)

    def resolved_run_name(self) -> str:
        """run_name, or the output folder's name plus a hash of its full path: the same output
        gives the same run (so re-submitting resumes), two outputs never share one."""
        if self.run_name:
            return self.run_name
        full = self.output if "://" in self.output else str(Path(self.output).expanduser().resolve())
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(full.rstrip("/")).name).strip("-.") or "run"
        return f"train-{name}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"

    def resolved_storage_path(self) -> str:
        return self.storage_path if "://" in self.storage_path else str(Path(os.path.expanduser(self.storage_path)).resolve())
