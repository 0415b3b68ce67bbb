"""Read prompt files (test sets, instruction datasets, any job's output) into uniform rows.

The public test sets work as they are: vicuna_eval.jsonl (`text`, `question_id`, `category`),
dolly_eval.json and self_instruct_eval.json (`instruction` + `context`, `idx`/`id`,
`category`), bpo_test.json (`prompt`); so do construct's and optimize's output folders and any
JSON / JSONL / Parquet file with other field names. Every input column is carried to the output
under its own name (ids and categories keep their values); one that collides with a column the
job writes itself is kept as `input_<name>`. A row that cannot be used becomes a rejected row
naming the row and the field; it is never dropped.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bpo_ray.data.files import read_rows
from bpo_ray.data.ledger import row_key
from bpo_ray.data.rows import STATUS_OK, STATUS_REJECTED, first_field

# Columns every prompt row has, in this order; input columns follow.
PROMPT_COLUMNS = ("id", "dataset", "prompt", "context", "source", "status", "reason")


class PromptFields(BaseModel):
    """Input field names; each entry lists names tried in order (the first present wins)."""

    model_config = ConfigDict(extra="forbid")

    id: list[str] = Field(["id", "idx", "question_id"], description="Row id fields (default: file:row).")
    prompt: list[str] = Field(["prompt", "instruction", "text", "question", "turns"],
                              description="Prompt fields: text, or a list of turns (the first user turn is used).")
    context: list[str] = Field(["context", "input"], description="Context fields (optional).")
    dataset: list[str] = Field(["dataset"], description="Dataset name fields (default: the file's name).")


def read_prompts(paths: list[str], fields: PromptFields, *, max_input_chars: int, key_salt: str,
                 reserved: tuple[str, ...] = ()):
    """A Ray Dataset of prompt rows (see `normalize_prompt`), each with a resume `key` over its
    prompt, context and `key_salt`. `reserved`: the columns the job adds (input columns of the
    same name are renamed `input_<name>`)."""
    return read_rows(paths, keyed_prompt, fields=fields.model_dump(), max_input_chars=max_input_chars,
                     key_salt=key_salt, reserved=tuple(reserved))


def keyed_prompt(record: Any, *, source: str, index: int, fields: dict, max_input_chars: int, key_salt: str,
                 reserved: tuple[str, ...]) -> dict:
    row = normalize_prompt(record, source=source, index=index, fields=PromptFields.model_validate(fields),
                           max_input_chars=max_input_chars, reserved=reserved)
    content = [row["prompt"], row["context"]]
    if row["status"] != STATUS_OK:  # two different broken rows must not share a key
        content.append(row["source"])
    return {**row, "key": row_key(content, key_salt)}


def normalize_prompt(record: Any, *, source: str, index: int, fields: PromptFields, max_input_chars: int,
                     reserved: tuple[str, ...] = ()) -> dict:
    """id, dataset, prompt, context, source, status ('ok' or 'rejected'), reason, then the
    record's own columns."""
    name = PurePosixPath(source.split("://")[-1])
    where = f"{name.name}:{index}"
    row: dict[str, Any] = {"id": where, "dataset": name.stem, "prompt": "", "context": "", "source": where,
                           "status": STATUS_OK, "reason": ""}
    if not isinstance(record, dict):
        return {**row, "status": STATUS_REJECTED, "reason": f"row {index} is not an object"}
    problems = []
    if (found := first_field(record, fields.id)) is not None:
        row["id"] = str(found[1])
    if (found := first_field(record, fields.dataset)) is not None and isinstance(found[1], str) and found[1]:
        row["dataset"] = found[1]
    found = first_field(record, fields.prompt)
    if found is None:
        problems.append(f"missing field prompt (looked for {', '.join(fields.prompt)})")
    else:
        prompt, problem = first_user_turn(*found)
        row["prompt"] = prompt
        if problem:
            problems.append(problem)
        elif not prompt.strip():
            problems.append(f"empty prompt (field {found[0]})")
    if (found := first_field(record, fields.context)) is not None and found[1] is not None:
        if isinstance(found[1], str):
            row["context"] = found[1]
        else:
            problems.append(f"field {found[0]} is {type(found[1]).__name__}, not text")
    size = len(row["prompt"]) + len(row["context"])
    if not problems and size > max_input_chars:
        problems.append(f"input too long: {size} characters > max_input_chars {max_input_chars}")
    if problems:
        row.update(status=STATUS_REJECTED, reason=f"row {where}: " + "; ".join(problems))
    return {**row, **carried_columns(record, row, reserved)}


def first_user_turn(field: str, value: Any) -> tuple[str, str | None]:
    """(the prompt, a problem or None) for a field holding text or a list of turns (strings,
    or chat messages with role and content): the first user turn is the prompt."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, list) and value:
        if all(isinstance(t, str) for t in value):
            return value[0], None
        if all(isinstance(t, dict) for t in value):
            users = [t.get("content") for t in value if t.get("role", "user") == "user"]
            if users and isinstance(users[0], str):
                return users[0], None
            return "", f"field {field} has no user turn with text content"
    kind = "an empty list" if value == [] else type(value).__name__
    return "", f"field {field} is {kind}, not text or a list of turns"


def carried_columns(record: dict, row: dict, reserved: tuple[str, ...]) -> dict:
    """The record's own columns, renamed `input_<name>` where the job writes a column of that name."""
    taken = set(row) | set(reserved) | {"key"}
    out = {}
    for name, value in record.items():
        if name in ("id", "prompt", "context", "dataset") and (value is None or str(value) == row[name]):
            continue  # the row's own column holds it (as text)
        out[f"input_{name}" if name in taken else name] = value
    return out
