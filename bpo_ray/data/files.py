"""Input files of every job: which files a path stands for, their records, and one Ray
Dataset of rows over them.

A path is a file, a folder (its JSON/JSONL/Parquet files; a construct output folder stands for
its pairs/ table), a URI pyarrow can open, or a public dataset name (`bpo:vicuna_eval`). Each
file is parsed in one Ray task, so an error names the file and line; a stage's row function
turns each record into a uniform row (or a rejected row with its reason).
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs

from bpo_ray.data.ledger import filesystem_and_path
from bpo_ray.data.public import resolve_inputs
from bpo_ray.errors import InputError

FILE_EXTENSIONS = ["json", "jsonl", "ndjson", "parquet"]

RowFn = Callable[..., dict]
"""(record, *, source, index, **kwargs) -> row."""


def read_rows(paths: list[str], row_fn: RowFn, **kwargs: Any):
    """A Ray Dataset with one row per record of every input file, made by `row_fn`."""
    import ray.data

    files = ray.data.read_binary_files(input_files(paths), include_paths=True)
    return files.flat_map(_rows_of_file, fn_kwargs={"row_fn": row_fn, "kwargs": kwargs})


def _rows_of_file(file: dict[str, Any], row_fn: RowFn, kwargs: dict) -> Iterator[dict]:
    rows = [row_fn(record, source=file["path"], index=index, **kwargs)
            for index, record in enumerate(parse_records(file["path"], file["bytes"]))]
    # Ray Data wants the same columns in every row of a block; records of one file may carry
    # different optional fields (the stages that keep input columns pass them all on).
    columns = list(dict.fromkeys(name for row in rows for name in row))
    mixed = {name for name in columns if len({_kind(row.get(name)) for row in rows} - {None}) > 1}
    for row in rows:
        # Arrow wants one type per column: a field that is text in one record and a number or
        # a list in another is kept as JSON text, every value of it, instead of failing the job.
        yield {name: _as_json(row.get(name)) if name in mixed else row.get(name) for name in columns}


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _as_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


# The table a job's output folder stands for when it is the next job's input.
JOB_TABLES = ("pairs", "optimized", "responses")


def input_files(paths: list[str]) -> list[str]:
    """The files to read: a job's output folder stands for its main table (construct's pairs/,
    optimize's optimized/, generate's responses/), any other folder for the data files in it.
    Raises InputError for a path that does not exist."""
    out: list[str] = []
    for path in resolve_inputs(paths):
        fs, base = filesystem_and_path(path)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"input: {path}: no such file or directory")
        if info.type == pafs.FileType.File:
            out.append(path)
            continue
        tables = [f"{base.rstrip('/')}/{t}" for t in JOB_TABLES]
        folder = next((t for t in tables if fs.get_file_info(t).type == pafs.FileType.Directory), base)
        found = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(folder, recursive=True))
                       if f.type == pafs.FileType.File and f.path.rsplit(".", 1)[-1] in FILE_EXTENSIONS)
        if not found:
            raise InputError(f"input: {path}: no JSON, JSONL or Parquet files in it")
        prefix = path[: len(path) - len(base)] if "://" in path else ""
        out += [prefix + f for f in found]
    return out


def parse_records(path: str, data: bytes) -> list[Any]:
    """The records of one file; raises InputError naming the file (and line) when unreadable."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        return []
    if not path.endswith((".jsonl", ".ndjson")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            if not text.lstrip().startswith("{"):
                raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        else:
            return _records_of_document(path, doc)
    return _json_lines(path, text)


def _records_of_document(path: str, doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) == 1:  # {"data": [...]} and similar wrappers
            return lists[0]
        return [doc]
    raise InputError(f"{path}: expected a JSON array of objects, got {type(doc).__name__}")


def _json_lines(path: str, text: str) -> list[Any]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    return records


