"""The one object that owns DeepSpeed: init, forward/backward/step, checkpoints, export.

The training loop talks to `TrainEngine` only; nothing else imports deepspeed. Every method
that touches ZeRO state is collective: all ranks call it, in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_TAG = "ds"
"""One fixed DeepSpeed tag: each Ray Train checkpoint folder holds exactly one state."""

CLIENT_STATE = "train_state.json"


class TrainEngine:
    @classmethod
    def from_pretrained(cls, model_path: str, ds_config: dict[str, Any]) -> "TrainEngine":
        """Load the base model in the run's precision and wrap it.

        Under ZeRO-3 the model is built inside `deepspeed.zero.Init` (transformers does so
        while an `HfDeepSpeedConfig` is alive): each rank allocates only its partition of each
        parameter and no rank ever holds the whole model, which is what lets ZeRO-3 train a
        model larger than one device.
        """
        import deepspeed
        from transformers import AutoModelForCausalLM

        dtype = (torch.bfloat16 if ds_config["bf16"]["enabled"]
                 else torch.float16 if ds_config["fp16"]["enabled"] else torch.float32)
        if ds_config["zero_optimization"]["stage"] != 3:
            return cls(AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype), ds_config)
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        deepspeed.init_distributed()  # zero.Init takes the world size from DeepSpeed's comm
        hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841 (transformers keeps a weak reference)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        finally:
            # Only this load is partitioned: left set, every later model construction in the
            # process (the export's, on rank 0 alone) would enter zero.Init's collectives and hang.
            unset_hf_deepspeed_config()
        return cls(model, ds_config)

    def __init__(self, model: torch.nn.Module, ds_config: dict[str, Any]) -> None:
        import deepspeed

        self.ds_config = ds_config
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config,
        )
        self.device = self.engine.device
        if self.zero_stage == 0 and self.engine.world_size == 1:
            # One rank has nobody to average with, yet DeepSpeed would still flatten every
            # gradient, all-reduce it over the process group and copy it back each step
            # (a fifth of a step on the embedded model on CPU). ZeRO 1-3 own their reduction.
            self.engine.enable_backward_allreduce = False

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (after gradient accumulation), restored by `load`."""
        return int(self.engine.global_steps)

    @property
    def zero_stage(self) -> int:
        return int(self.engine.zero_optimization_stage())

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the unmasked (target) tokens of one micro-batch."""
        self.engine.train()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.engine(**batch).loss

    def backward_and_step(self, loss: torch.Tensor) -> bool:
        """Backward, then step; True when this micro-batch closed an optimizer step (the
        engine steps the optimizer and scheduler only at accumulation boundaries)."""
        before = self.engine.global_steps
        self.engine.backward(loss)
        self.engine.step()
        return self.engine.global_steps != before

    @torch.no_grad()
    def eval_loss_sums(self, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        """(sum of token losses, target tokens) of one batch, for an exact mean over batches."""
        self.engine.eval()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum",
            ignore_index=-100,
        )
        return float(losses), int((labels != -100).sum())

    def save(self, folder: str | Path, client_state: dict[str, Any]) -> None:
        """This rank's share of the training state (weights, optimizer, scheduler, step);
        Ray Train merges the ranks' folders into one checkpoint."""
        self.engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG, client_state=client_state)
        (Path(folder) / CLIENT_STATE).write_text(json.dumps(client_state))

    def load(self, folder: str | Path) -> dict[str, Any]:
        """Restore a state written by `save` (all ranks' files in one folder); returns the
        client state (epoch, position) saved with it."""
        path, client = self.engine.load_checkpoint(str(folder), tag=CHECKPOINT_TAG)
        if path is None:
            raise RuntimeError(f"checkpoint {folder}: DeepSpeed found no state under tag {CHECKPOINT_TAG!r}")
        saved = json.loads((Path(folder) / CLIENT_STATE).read_text())
        return {**saved, **{k: v for k, v in (client or {}).items() if k in saved}}

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on CPU on rank 0 (None elsewhere). Under ZeRO-3 the
        parameters are gathered layer by layer from every rank's partition."""
        import torch.distributed as dist

        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank != 0:
            return None
        return {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}
