"""The trained optimizer as a plain Hugging Face folder that carries its own contract.

Weights (safetensors), config, tokenizer and generation config load with `from_pretrained`
and the local backend as they are; `bpo_template.json` says how to lay out a prompt,
`train_config.json` how the model was made, and README.md summarizes both for a person.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from bpo_ray.data.ledger import filesystem_and_path
from bpo_ray.optimizer_template import OptimizerTemplate

MODEL_SUBDIR = "hf_model"
"""Where rank 0 puts the consolidated model inside the final Ray Train checkpoint."""

TRAIN_CONFIG_FILE = "train_config.json"


def save_hf_model(state_dict: dict[str, torch.Tensor], base_model_path: str, folder: str | Path) -> Path:
    """A fresh model from the base's config, loaded strictly with the trained weights (so a
    missing or stray tensor fails here, not at the user's first load), saved as safetensors
    with the base's tokenizer and generation config."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(base_model_path)
    dtype = next(iter(state_dict.values())).dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Tied weights share one tensor; the state dict may hold it under both names.
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"export: trained weights do not match {base_model_path} "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    try:
        model.generation_config = GenerationConfig.from_pretrained(base_model_path)
    except OSError:  # the base has none: keep the one derived from its config
        pass
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model_path).save_pretrained(folder)
    return folder


def finish_output(model_dir: str | Path, output: str, *, template: OptimizerTemplate,
                  train_config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Copy the exported model into `output` and add the template, config and card.

    `output` is a local or shared folder or any URI pyarrow opens (s3://, gs://, file://): the
    small files are written to a local temp folder, and pyarrow copies both folders to the
    destination's filesystem, so a URI never becomes a local folder named 's3:'.
    """
    fs, base = filesystem_and_path(output)
    local = pafs.LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="bpo-export-") as extras:
        template.save(extras)
        (Path(extras) / TRAIN_CONFIG_FILE).write_text(json.dumps(train_config, indent=2, default=str) + "\n")
        (Path(extras) / "README.md").write_text(model_card(template=template, train_config=train_config,
                                                           metrics=metrics))
        fs.create_dir(base, recursive=True)
        for folder in (str(model_dir), extras):
            pafs.copy_files(folder, base, source_filesystem=local, destination_filesystem=fs)
    return output


def model_card(*, template: OptimizerTemplate, train_config: dict[str, Any], metrics: dict[str, Any]) -> str:
    ds = train_config.get("deepspeed", {})
    rows = [
        ("base model", train_config.get("base_model")),
        ("epochs", train_config.get("epochs")),
        ("learning rate", f"{train_config.get('lr')} (warm-up {train_config.get('warmup_ratio')}, linear decay)"),
        ("micro-batch x accumulation x workers",
         f"{ds.get('micro_batch_per_gpu')} x {ds.get('gradient_accumulation_steps')} x {train_config.get('num_workers')}"),
        ("ZeRO stage", ds.get("zero_stage")),
        ("max length", train_config.get("max_length")),
    ]
    metric_rows = [(k, _fmt(v)) for k, v in metrics.items()]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows + metric_rows)
    return f"""# BPO prompt optimizer

A causal LM fine-tuned with `bpo-ray train` to rewrite a user's prompt into an optimized prompt
(Black-Box Prompt Optimization). The loss covered the optimized prompt and EOS only.

Use it with `bpo-ray optimize` or the serving Optimizer: they read the prompt layout from
`bpo_template.json` ({template.style} style). The full training settings are in
`{TRAIN_CONFIG_FILE}`.

| setting / metric | value |
|---|---|
{table}
"""


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
