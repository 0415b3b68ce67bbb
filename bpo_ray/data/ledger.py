"""A job's output folder as a resumable ledger.

Rows stream out of Ray Data into part files under `DIR/<table>/` (Parquet or JSON Lines, local
path or any URI pyarrow can open), flushed every few hundred rows or every few seconds, so an
interrupted job loses at most what was in flight and the last seconds. A row's `key` is a content hash of its input and of everything that shapes
its output; re-running into the same DIR reads the keys already there and skips those rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

OutputFormat = Literal["parquet", "jsonl"]


def row_key(values: Iterable[Any], salt: str) -> str:
    """Content hash of a row's inputs plus the salt (everything else that shapes the output)."""
    payload = json.dumps([list(values), salt], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def settings_hash(*parts: Any) -> str:
    """A short hash of everything besides the row that changes a stage's output: the model's
    fingerprint, the prompt texts, the filter and repair settings. The resume key's salt."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)


class TableWriter:
    """Buffers rows and writes them as numbered part files of one run, against a declared schema.

    Flushes every `flush_rows` rows and, from a background thread, every `flush_s` seconds even
    while the job waits on a slow block, so a killed job re-pays only what was in flight plus a
    few seconds. Use as a context manager (or call `close`): the last rows are written on the way
    out, also when the job fails.
    """

    def __init__(self, root: str, table: str, fmt: OutputFormat, *, schema: pa.Schema | None = None,
                 flush_rows: int = 256, flush_s: float = 5.0):
        self.fs, base = filesystem_and_path(root)
        self.dir = f"{base.rstrip('/')}/{table}"
        self.fs.create_dir(self.dir, recursive=True)
        self.fmt = fmt
        self.schema = schema
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._buffer: list[dict] = []
        self._parts = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.rows_written = 0
        self._timer = threading.Thread(target=self._flush_periodically, name=f"flush-{table}", daemon=True)
        self._timer.start()

    def add(self, rows: list[dict]) -> None:
        with self._lock:
            self._buffer.extend(rows)
            full = len(self._buffer) >= self.flush_rows
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:  # one writer at a time: the timer thread and the job's thread
            rows, self._buffer = self._buffer, []
            if rows:
                self._write(rows)

    def close(self) -> None:
        self._closed.set()
        self._timer.join()
        self.flush()

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.flush_s):
            try:
                self.flush()
            except Exception:  # the job's own flush on close reports it
                log.exception("periodic flush of %s failed", self.dir)

    def _write(self, rows: list[dict]) -> None:
        ext = "parquet" if self.fmt == "parquet" else "jsonl"
        path = f"{self.dir}/part-{self.run}-{self._parts:05d}.{ext}"
        tmp = path + ".tmp"
        if self.schema is None:  # every row's columns, not only the first row's
            columns = list(dict.fromkeys(name for row in rows for name in row))
            rows = [{name: row.get(name) for name in columns} for row in rows]
        table = pa.Table.from_pylist(rows, schema=self.schema)
        # Write then rename, so a reader (or a resume) never sees half a file.
        with self.fs.open_output_stream(tmp) as out:
            if self.fmt == "parquet":
                pq.write_table(table, out)
            else:
                out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()).encode())
        self.fs.move(tmp, path)
        self.rows_written += len(rows)
        self._parts += 1


def write_summary(root: str, summary: dict[str, Any]) -> None:
    """DIR/summary.json, on any filesystem the ledger writes to."""
    fs, base = filesystem_and_path(root)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base.rstrip('/')}/summary.json") as out:
        out.write((json.dumps(summary, indent=2, default=str) + "\n").encode())


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
    fmt_name = "parquet" if fmt == "parquet" else "json"
    dataset = pads.dataset(files, filesystem=fs, format=fmt_name)
    # A dataset takes its first file's schema; parts written without a declared schema (the
    # streamed pipeline's) may hold a column that is all null in one part and text in another.
    schemas = [fragment.physical_schema for fragment in dataset.get_fragments()]
    if any(s != schemas[0] for s in schemas):
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        dataset = pads.dataset(files, filesystem=fs, format=fmt_name, schema=schema)
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
