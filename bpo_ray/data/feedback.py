"""Read pairwise feedback (instruction, context, good and bad response) into uniform rows.

Accepts the public BPO shapes (feedback_val_300.json, bpo_test.json, examples_*.json) and any
JSON array / JSON Lines / Parquet file with configurable field names, from local paths or any
URI Ray Data reads. Each file is parsed in one Ray task so errors can name the file and row.
A row that cannot be used becomes a rejected row with its reason; it is never dropped.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bpo_ray.data.files import FILE_EXTENSIONS, parse_records, read_rows  # noqa: F401 (re-exported)
from bpo_ray.data.ledger import row_key
from bpo_ray.data.rows import STATUS_OK, STATUS_REJECTED, first_field


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
    return read_rows([paths] if isinstance(paths, str) else list(paths), keyed_feedback,
                     fields=fields.model_dump(), max_input_chars=max_input_chars, key_salt=key_salt)


def keyed_feedback(record: Any, *, source: str, index: int, fields: dict, max_input_chars: int,
                   key_salt: str) -> dict:
    row = normalize_feedback(record, source=source, index=index, fields=FeedbackFields.model_validate(fields),
                             max_input_chars=max_input_chars)
    content = [row[c] for c in ("instruction", "context", "has_context", "good_res", "bad_res")]
    # Unusable rows are keyed by position too: two different broken rows must not collide.
    if row["status"] != STATUS_OK:
        content.append(row["source"])
    return {**row, "key": row_key(content, key_salt)}


def normalize_feedback(record: Any, *, source: str, index: int, fields: FeedbackFields, max_input_chars: int) -> dict:
    """One uniform row: id, instruction, context, has_context, good_res, bad_res, source,
    status ('ok' or 'rejected') and reason. Same columns and types for every row."""
    where = f"{PurePosixPath(source).name}:{index}"
    row = {"id": where, "instruction": "", "context": "", "has_context": False, "good_res": "",
           "bad_res": "", "source": where, "status": STATUS_OK, "reason": ""}
    if not isinstance(record, dict):
        return {**row, "status": STATUS_REJECTED, "reason": f"row {index} is not an object"}
    if (rid := first_field(record, fields.id)) is not None:
        row["id"] = str(rid[1])
    problems = []
    for column, names, required in (("instruction", fields.instruction, True), ("context", fields.context, False),
                                    ("good_res", fields.good, True), ("bad_res", fields.bad, True)):
        found = first_field(record, names)
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
        row.update(status=STATUS_REJECTED, reason="; ".join(problems))
    return row
