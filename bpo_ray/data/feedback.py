"""Read pairwise feedback (instruction, context, good and bad response) into uniform rows.

Accepts the public BPO shapes (feedback_val_300.json, bpo_test.json, examples_*.json) and any
JSON array / JSON Lines / Parquet file with configurable field names, from local paths or any
URI Ray Data reads. Each file is parsed in one Ray task so errors can name the file and row.
A row that cannot be used becomes a rejected row with its reason; it is never dropped.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import PurePosixPath
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from bpo_ray.data.ledger import row_key
from bpo_ray.errors import InputError

FILE_EXTENSIONS = ["json", "jsonl", "ndjson", "parquet"]


class FeedbackFields(BaseModel):
    """Input field names; each entry lists names tried in order (the first present wins)."""

    model_config = ConfigDict(extra="forbid")

    id: list[str] = Field(["id", "idx", "question_id"], description="Row id fields (optional).")
    instruction: list[str] = Field(["instruction", "prompt", "question", "text"], description="Instruction fields.")
    context: list[str] = Field(["context", "input"], description="Context fields (optional).")
    good: list[str] = Field(["good_res", "chosen", "good_response"], description="Preferred response fields.")
    bad: list[str] = Field(["bad_res", "rejected", "bad_response"], description="Rejected response fields.")


def read_feedback(paths: str | list[str], fields: FeedbackFields, *, max_input_chars: int, key_salt: str):
    """A Ray Dataset of normalized feedback rows (see `normalize_feedback`), each with a
    resume `key` that covers its content and `key_salt` (what else shapes the output)."""
    import ray

    paths = [paths] if isinstance(paths, str) else list(paths)
    for path in paths:
        if "://" not in path and not os.path.exists(path):
            raise InputError(f"{path}: no such file or directory")
    files = ray.data.read_binary_files(paths, include_paths=True, file_extensions=FILE_EXTENSIONS)
    return files.flat_map(
        _rows_of_file,
        fn_kwargs={"fields": fields.model_dump(), "max_input_chars": max_input_chars, "key_salt": key_salt},
    )


def _rows_of_file(file: dict[str, Any], fields: dict, max_input_chars: int, key_salt: str) -> Iterator[dict]:
    path = file["path"]
    spec = FeedbackFields.model_validate(fields)
    for index, record in enumerate(parse_records(path, file["bytes"])):
        row = normalize_feedback(record, source=path, index=index, fields=spec, max_input_chars=max_input_chars)
        content = [row[c] for c in ("instruction", "context", "has_context", "good_res", "bad_res")]
        # Unusable rows are keyed by position too: two different broken rows must not collide.
        if row["status"] != "ok":
            content.append(row["source"])
        yield {**row, "key": row_key(content, key_salt)}


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


def normalize_feedback(record: Any, *, source: str, index: int, fields: FeedbackFields, max_input_chars: int) -> dict:
    """One uniform row: id, instruction, context, has_context, good_res, bad_res, source,
    status ('ok' or 'rejected') and reason. Same columns and types for every row."""
    where = f"{PurePosixPath(source).name}:{index}"
    row = {"id": where, "instruction": "", "context": "", "has_context": False, "good_res": "",
           "bad_res": "", "source": where, "status": "ok", "reason": ""}
    if not isinstance(record, dict):
        return {**row, "status": "rejected", "reason": f"row {index} is not an object"}
    if (rid := _first(record, fields.id)) is not None:
        row["id"] = str(rid[1])
    problems = []
    for column, names, required in (("instruction", fields.instruction, True), ("context", fields.context, False),
                                    ("good_res", fields.good, True), ("bad_res", fields.bad, True)):
        found = _first(record, names)
        if found is None:
            if required:
                problems.append(f"missing field {column} (looked for {', '.join(names)})")
            continue
        name, value = found
        if value is None and not required:
            continue
        if not isinstance(value, str):
            problems.append(f"field {name} is {type(value).__name__}, not text")
            continue
        row[column] = value
        if column == "context":
            # As in the original pipeline: a present context key counts, even when empty.
            row["has_context"] = True
    if not problems and not row["instruction"].strip():
        problems.append("empty instruction")
    size = sum(len(row[c]) for c in ("instruction", "context", "good_res", "bad_res"))
    if not problems and size > max_input_chars:
        problems.append(f"input too long: {size} characters > max_input_chars {max_input_chars}")
    if problems:
        row.update(status="rejected", reason="; ".join(problems))
    return row


def _first(record: dict, names: list[str]) -> tuple[str, Any] | None:
    for name in names:
        if name in record:
            return name, record[name]
    return None
