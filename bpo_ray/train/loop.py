"""train_loop_per_worker: what each Ray Train worker runs.

Every rank takes the same decisions at the same optimizer step (log, checkpoint, stop), since
`ray.train.report` and DeepSpeed's collectives are barriers: a rank that skips one hangs the
others. The train shard of each worker has the same row count (Ray's equal split), and the
number of micro-batches per epoch is fixed by the driver, so all ranks step together.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bpo_ray.train.memory import peak_memory_mb, release_freed_memory
from bpo_ray.train.tokenize import collate


@dataclass
class LoopConfig:
    """What the driver decided, handed to every worker as plain values."""

    model_path: str
    ds_config: dict[str, Any]
    pad_id: int
    epochs: int
    total_steps: int
    micro_batches_per_epoch: int
    micro_batch: int
    logging_steps: int
    checkpoint_every_steps: int | None
    stop_after_steps: int | None
    seed: int
    on_gpu: bool
    release_freed_memory: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from bpo_ray.train.engine import TrainEngine
    from bpo_ray.train.export import MODEL_SUBDIR, save_hf_model

    cfg = LoopConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.release_freed_memory:
        release_freed_memory()  # before the model loads, so its buffers are mmapped too
    torch.manual_seed(cfg.seed)
    engine = TrainEngine.from_pretrained(cfg.model_path, cfg.ds_config)

    epoch, skip = 0, 0
    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = engine.load(folder)
        epoch, skip = state["epoch"], state["batch_in_epoch"]
        start_step = engine.global_step

    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    meter = _Meter(world)
    stopped = False
    last_val: float | None = None
    last_log: dict[str, Any] = {}
    # Where each rank runs (the node ids, by rank), in every report: the driver tells the user
    # how the placement strategy laid the workers out.
    report_base = {"start_step": start_step, "rank": rank, "worker_nodes": node_ids_by_rank(engine.device, world)}

    def checkpoint_now(metrics: dict[str, Any], position: tuple[int, int], extra_dir: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as folder:
            engine.save(folder, {"epoch": position[0], "batch_in_epoch": position[1], "step": engine.global_step})
            if extra_dir is not None and rank == 0:
                shutil.move(extra_dir, Path(folder) / MODEL_SUBDIR)
            ray.train.report({**report_base, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(folder))

    while epoch < cfg.epochs and not stopped:
        batches = train_shard.iter_batches(
            batch_size=cfg.micro_batch, batch_format="numpy", drop_last=False,
            local_shuffle_buffer_size=max(cfg.micro_batch * 16, 64), local_shuffle_seed=cfg.seed + epoch,
        )
        done_in_epoch = 0
        for index, batch in enumerate(batches):
            if index >= cfg.micro_batches_per_epoch:
                break  # a remainder beyond the agreed count would desynchronize the ranks
            done_in_epoch = index + 1
            if index < skip:
                continue  # resumed mid-epoch: these micro-batches were trained before the checkpoint
            meter.start()
            tensors = collate(batch, cfg.pad_id)
            loss = engine.loss(tensors)
            meter.add(float(loss.detach()), int(tensors["attention_mask"].sum()))
            if not engine.backward_and_step(loss):
                continue
            step = engine.global_step
            if step % cfg.logging_steps == 0:
                last_log = meter.flush(engine, epoch, step)
                ray.train.report({**report_base, **last_log})
            end_of_epoch = done_in_epoch == cfg.micro_batches_per_epoch
            stopped = (cfg.stop_after_steps is not None and step - start_step >= cfg.stop_after_steps
                       and step < cfg.total_steps)  # the run's last step is no stop: it finishes
            if (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0) or (stopped and not end_of_epoch):
                checkpoint_now({"step": step, "epoch": epoch}, (epoch, done_in_epoch))
            if stopped:
                break
        if done_in_epoch < cfg.micro_batches_per_epoch and not stopped:
            raise RuntimeError(f"rank {rank}: epoch {epoch} had {done_in_epoch} micro-batches, "
                               f"{cfg.micro_batches_per_epoch} expected")
        if stopped and done_in_epoch < cfg.micro_batches_per_epoch:
            break
        last_val = validation_loss(engine, val_data, cfg)
        epoch, skip = epoch + 1, 0
        metrics = {"epoch": epoch - 1, "step": engine.global_step, "val_loss": last_val,
                   "epoch_done": True}
        if cfg.checkpoint_every_steps is None or stopped:
            checkpoint_now(metrics, (epoch, 0))
        else:
            ray.train.report({**report_base, **metrics})

    if stopped:
        return
    # The end: the consolidated model travels inside the final checkpoint (rank 0 writes it),
    # so the driver finds it in storage wherever rank 0 ran.
    state_dict = engine.full_state_dict()
    export_dir = None
    if rank == 0:
        export_dir = tempfile.mkdtemp(prefix="bpo-export-")
        save_hf_model(state_dict, cfg.model_path, export_dir)
    final = {**last_log, "step": engine.global_step, "epoch": epoch - 1, "val_loss": last_val, "finished": True}
    checkpoint_now(final, (epoch, 0), extra_dir=export_dir)


def node_ids_by_rank(device: Any, world: int) -> list[str]:
    """Every rank's Ray node id, gathered over the process group (a fixed-size tensor: node
    ids are hex of one length, and NCCL gathers device tensors only)."""
    import ray
    import torch.distributed as dist

    mine = ray.get_runtime_context().get_node_id()
    if not (dist.is_initialized() and world > 1):
        return [mine]
    raw = torch.tensor(list(bytes.fromhex(mine)), dtype=torch.int64, device=device)
    parts = [torch.empty_like(raw) for _ in range(world)]
    dist.all_gather(parts, raw)
    return [bytes(part.tolist()).hex() for part in parts]


@torch.no_grad()
def validation_loss(engine: Any, val_data: Any, cfg: LoopConfig) -> float | None:
    """Token-weighted mean loss over the whole validation split. Every rank reads all of it
    (it is small, and ZeRO-3 forwards need every rank anyway), so all agree on the value."""
    total, tokens = 0.0, 0
    for batch in val_data.iter_batches(batch_size=cfg.micro_batch, batch_format="numpy"):
        loss_sum, n = engine.eval_loss_sums(collate(batch, cfg.pad_id))
        total, tokens = total + loss_sum, tokens + n
    return total / tokens if tokens else None


class _Meter:
    """Loss and throughput since the last report, summed over all ranks; peak memory, the
    highest rank's."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.first_loss: float | None = None
        self._reset()

    def _reset(self) -> None:
        # The clock starts at the window's first micro-batch, not at construction: the data
        # pipeline's start-up (and any checkpoint or validation between windows) is not training.
        self.loss_sum, self.count, self.tokens, self.started = 0.0, 0, 0, None

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.loss_sum, self.count, self.tokens = self.loss_sum + loss, self.count + 1, self.tokens + tokens

    def flush(self, engine: Any, epoch: int, step: int) -> dict[str, Any]:
        import torch.distributed as dist

        totals = torch.tensor([self.loss_sum, self.count, self.tokens], dtype=torch.float64)
        peak = torch.tensor([peak_memory_mb()], dtype=torch.float64)
        if dist.is_initialized() and self.world > 1:
            totals, peak = totals.to(engine.device), peak.to(engine.device)  # NCCL reduces device tensors only
            dist.all_reduce(totals)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        loss_sum, count, tokens = totals.tolist()
        elapsed = max(time.perf_counter() - (self.started or time.perf_counter()), 1e-9)
        loss = loss_sum / max(count, 1)
        self.first_loss = loss if self.first_loss is None else self.first_loss
        metrics = {
            "epoch": epoch, "step": step, "loss": loss, "loss_first": self.first_loss, "lr": engine.current_lr(),
            "tokens_per_s": tokens / elapsed, "peak_memory_mb": float(peak.item()),
        }
        self._reset()
        return metrics


def micro_batches_per_epoch(train_rows: int, world: int, micro_batch: int) -> int:
    """Micro-batches each rank runs per epoch: Ray's equal split gives every rank
    floor(rows / world) rows."""
    per_rank = train_rows // world
    if per_rank == 0:
        return 0
    return math.ceil(per_rank / micro_batch)


def total_optimizer_steps(micro_batches: int, epochs: int, accumulation: int) -> int:
    """Optimizer steps the run takes: DeepSpeed steps only when an accumulation closes, so a
    trailing partial accumulation adds none."""
    return micro_batches * epochs // accumulation
