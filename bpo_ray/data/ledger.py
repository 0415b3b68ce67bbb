"""A job's output folder as a resumable ledger.

Rows stream out of Ray Data into part files under `DIR/<table>/` (Parquet or JSON Lines, local
path or any URI pyarrow can open), flushed every few hundred rows, so an interrupted job loses
at most one buffer. A row's `key` is a content hash of its input and of everything that shapes
its output; re-running into the same DIR reads the keys already there and skips those rows.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, Callable, Iterable, Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

OutputFormat = Literal["parquet", "jsonl"]


def row_key(values: Iterable[Any], salt: str) -> str:
    """Content hash of a row's inputs plus the salt (model fingerprint, prompt version)."""
    payload = json.dumps([list(values), salt], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)


class TableWriter:
    """Buffers rows and writes them as numbered part files of one run."""

    def __init__(self, root: str, table: str, fmt: OutputFormat, *, flush_rows: int = 256, flush_s: float = 20.0):
        self.fs, base = filesystem_and_path(root)
        self.dir = f"{base.rstrip('/')}/{table}"
        self.fs.create_dir(self.dir, recursive=True)
        self.fmt = fmt
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._buffer: list[dict] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        self.rows_written = 0

    def add(self, rows: list[dict]) -> None:
        self._buffer.extend(rows)
        if len(self._buffer) >= self.flush_rows or time.monotonic() - self._last_flush > self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        ext = "parquet" if self.fmt == "parquet" else "jsonl"
        path = f"{self.dir}/part-{self.run}-{self._parts:05d}.{ext}"
        tmp = path + ".tmp"
        # Write then rename, so a reader (or a resume) never sees half a file.
        with self.fs.open_output_stream(tmp) as out:
            if self.fmt == "parquet":
                pq.write_table(pa.Table.from_pylist(self._buffer), out)
            else:
                out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._buffer).encode())
        self.fs.move(tmp, path)
        self.rows_written += len(self._buffer)
        self._parts += 1
        self._buffer = []


def read_table(root: str, table: str, fmt: OutputFormat, columns: list[str] | None = None) -> pa.Table | None:
    """All part files of one table, or None when there are none yet."""
    fs, base = filesystem_and_path(root)
    path = f"{base.rstrip('/')}/{table}"
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    ext = ".parquet" if fmt == "parquet" else ".jsonl"
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(path)) if f.path.endswith(ext)]
    if not files:
        return None
    dataset = pads.dataset(files, filesystem=fs, format="parquet" if fmt == "parquet" else "json")
    return dataset.to_table(columns=columns)


def done_keys(root: str, fmt: OutputFormat, tables: dict[str, Callable[[pa.Table], pa.Table] | None]) -> set[str]:
    """Keys already in the ledger; each table may filter its rows first (e.g. drop the
    rejections worth retrying)."""
    keys: set[str] = set()
    for table, keep in tables.items():
        data = read_table(root, table, fmt)
        if data is None or "key" not in data.column_names:
            continue
        if keep is not None:
            data = keep(data)
        keys.update(data.column("key").to_pylist())
    return keys
