"""bpo-ray's per-machine cache (`$BPO_RAY_CACHE`, or ~/.cache/bpo-ray): folders built once and
then read by every process: the embedded model's conversion, the semantic gate's MiniLM, and
model folders fetched from a URI (s3://, gs://, file://) so that transformers can load them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from bpo_ray.errors import ModelUnavailableError

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """`$BPO_RAY_CACHE`, or ~/.cache/bpo-ray."""
    return Path(os.environ.get("BPO_RAY_CACHE") or Path.home() / ".cache" / "bpo-ray").expanduser()


def build_once(target: Path, build: Callable[[Path], None], *, stamp: str, what: str) -> Path:
    """`target`, made by `build(folder)` unless a finished build with the same `stamp` is there.

    Safe to call from many processes at once (stage actors, Serve replicas): one builds under a
    file lock into a temp folder and renames it into place; the others wait and then find the
    finished folder. The stamp (a version, a listing of the source) is kept in the folder's
    marker, so a changed source is built again; a half-built folder is never read.
    """
    if _stamp(target) == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _stamp(target) == stamp:  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            log.info("%s into %s (once per machine)", what, target)
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text(stamp + "\n")
            for f in tmp.rglob("*"):  # weights may be written private (0600)
                if f.is_file():
                    f.chmod(0o644)
            if target.exists():  # an older build, or a run killed before its marker
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stamp(target: Path) -> str | None:
    marker = target / COMPLETE_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def fetched_model_path(uri: str) -> Path:
    """A local copy of the model folder at `uri` (what `bpo-ray train --output s3://...` wrote),
    fetched once per machine and again when the files there change (names, sizes, times)."""
    import pyarrow.fs as pafs

    fs, base, stamp = _remote_folder(uri)
    name = f"{Path(base).name or 'model'}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"

    def fetch(folder: Path) -> None:
        pafs.copy_files(base, str(folder), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())

    return build_once(cache_root() / "fetched" / name, fetch, stamp=stamp, what=f"fetching {uri}")


def remote_folder_stamp(uri: str) -> str:
    """What identifies the folder at `uri` (its files' names, sizes and times): changes when
    the model there is rewritten, so resume keys follow the weights, not the address."""
    return _remote_folder(uri)[2]


def _remote_folder(uri: str) -> tuple[Any, str, str]:
    import pyarrow.fs as pafs

    from bpo_ray.data.ledger import filesystem_and_path

    try:
        fs, base = filesystem_and_path(uri)
        base = base.rstrip("/")
        files = [f for f in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                 if f.type == pafs.FileType.File]
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"model.model: cannot read the model folder {uri}: {exc}") from None
    if not files:
        raise ModelUnavailableError(f"model.model: no model folder at {uri} (no files there)")
    listing = sorted((f.path.removeprefix(base + "/"), f.size, f.mtime_ns) for f in files)
    return fs, base, hashlib.sha256(json.dumps([uri, listing]).encode()).hexdigest()
