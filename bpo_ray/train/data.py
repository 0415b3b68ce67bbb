"""Training pairs in, tokenized train and validation splits out, on Ray Data.

Reads every input shape the project meets: a construct output folder (DIR/pairs/*), BPO-style
pair files (prompt, optimized_prompt) and feedback files that carry an optimized prompt
(feedback_val_300.json: instruction, context, optimized_prompt). Each file is parsed in one
task, so errors name the file and row. A row that cannot be trained on is kept, with its
reason, for the rejected output: rows in = train + validation + rejected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterator

import pyarrow.fs as pafs

from bpo_ray.data.feedback import FILE_EXTENSIONS, parse_records
from bpo_ray.data.ledger import filesystem_and_path
from bpo_ray.errors import ConfigError, InputError
from bpo_ray.optimizer_template import OptimizerTemplate
from bpo_ray.train.config import PairFields
from bpo_ray.train.tokenize import tokenize_batch

ROW_COLUMNS = ["id", "prompt", "context", "optimized_prompt", "source", "reason"]
TRAIN_COLUMNS = ["input_ids", "labels", "attention_mask"]
MISSING = "missing field"


def input_files(paths: list[str]) -> list[str]:
    """The files to read: a construct output folder stands for its pairs/ table, any other
    folder for the pair files in it. Raises InputError for a path that does not exist."""
    out: list[str] = []
    for path in paths:
        fs, base = filesystem_and_path(path)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"input: {path}: no such file or directory")
        if info.type == pafs.FileType.File:
            out.append(path)
            continue
        pairs = f"{base.rstrip('/')}/pairs"
        folder = pairs if fs.get_file_info(pairs).type == pafs.FileType.Directory else base
        found = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(folder, recursive=True))
                       if f.type == pafs.FileType.File and f.path.rsplit(".", 1)[-1] in FILE_EXTENSIONS)
        if not found:
            raise InputError(f"input: {path}: no JSON, JSONL or Parquet files in it")
        prefix = path[: len(path) - len(base)] if "://" in path else ""
        out += [prefix + f for f in found]
    return out


def read_pairs(paths: list[str], fields: PairFields, *, limit: int | None = None):
    """A Ray Dataset of rows (id, prompt, context, optimized_prompt, source, reason); reason
    is empty for a usable row."""
    import ray.data

    files = ray.data.read_binary_files(input_files(paths), include_paths=True)
    rows = files.flat_map(_rows_of_file, fn_kwargs={"fields": fields.model_dump()})
    return rows.limit(limit) if limit else rows


def _rows_of_file(file: dict[str, Any], fields: dict) -> Iterator[dict]:
    spec = PairFields.model_validate(fields)
    for index, record in enumerate(parse_records(file["path"], file["bytes"])):
        yield normalize_pair(record, source=file["path"], index=index, fields=spec)


def normalize_pair(record: Any, *, source: str, index: int, fields: PairFields) -> dict:
    """One uniform row; same columns and types for every row, usable or not."""
    where = f"{PurePosixPath(source).name}:{index}"
    row = {"id": where, "prompt": "", "context": "", "optimized_prompt": "", "source": where, "reason": ""}
    if not isinstance(record, dict):
        return {**row, "reason": f"row {index} is not an object"}
    problems = []
    for column, names, required in (("id", fields.id, False), ("prompt", fields.prompt, True),
                                    ("context", fields.context, False), ("optimized_prompt", fields.target, True)):
        name = next((n for n in names if n in record), None)
        value = record.get(name) if name else None
        if value is None:
            if required:
                problems.append(f"{MISSING} {column} (looked for {', '.join(names)})")
            continue
        if column == "id":
            row["id"] = str(value)
        elif not isinstance(value, str):
            problems.append(f"field {name} is {type(value).__name__}, not text")
        else:
            row[column] = value
    if not problems and not row["prompt"].strip():
        problems.append("empty prompt")
    if not problems and not row["optimized_prompt"].strip():
        problems.append("empty optimized_prompt")
    return {**row, "reason": "; ".join(problems)}


def check_rows(counts: dict[str, int], reasons: dict[str, int], fields: PairFields) -> None:
    """Fail before training when the input cannot train anything: no rows, or a required
    column absent from every row (a wrong field name, not a few bad rows)."""
    total = sum(counts.values())
    if total == 0:
        raise ConfigError("input: no rows in the input files (empty dataset)")
    for column, names in (("prompt", fields.prompt), ("optimized_prompt", fields.target)):
        label = f"{MISSING} {column} (looked for {', '.join(names)})"
        missing = sum(n for r, n in reasons.items() if label in r)
        if missing == total:
            setting = "fields.prompt" if column == "prompt" else "fields.target"
            raise ConfigError(f"input: no row has the column {column!r} (looked for {', '.join(names)}); "
                              f"name the column with {setting}")
    if counts.get("ok", 0) == 0:
        top = max(reasons.items(), key=lambda kv: kv[1])[0]
        raise ConfigError(f"input: none of the {total} rows is usable (e.g. {top})")


def split_key(row: dict, seed: int) -> int:
    """A stable number per pair content: the split does not depend on file order or the
    cluster, and duplicates of one pair land in the same split (no leak into validation)."""
    payload = json.dumps([row["prompt"], row["context"], row["optimized_prompt"], seed], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(payload.encode()).digest()[:8], "big") >> 1


def val_count(val_size: int | float, rows: int) -> int:
    """Held-out rows: the count, or the fraction rounded, at least 1; never all rows."""
    wanted = val_size if isinstance(val_size, int) else max(1, round(val_size * rows))
    if wanted >= rows:
        raise ConfigError(f"val_size: {val_size} leaves no training rows out of {rows} usable rows")
    return wanted


@dataclass
class Splits:
    train: Any
    val: Any
    rejected: list[dict]
    rows_in: int
    train_rows: int
    val_rows: int
    train_tokens: int


def tokenize_and_split(rows, *, tokenizer_path: str, template: OptimizerTemplate, max_length: int,
                       val_size: int | float, seed: int) -> Splits:
    """Tokenize (a Ray Data step), set rejected rows aside, and split the rest by content hash.

    Both splits come back materialized: training workers then read blocks that already exist
    and need no CPUs for Ray Data tasks next to their own.
    """
    tokenized = rows.map_batches(
        _tokenize_usable,
        fn_kwargs={"tokenizer_path": tokenizer_path, "template_json": template.model_dump_json(),
                   "max_length": max_length, "seed": seed},
        batch_format="pandas",
    ).materialize()
    meta = tokenized.select_columns(["id", "source", "reason", "split_key", "num_tokens"]).to_pandas()
    rejected = meta[meta["reason"] != ""][["id", "source", "reason"]].to_dict("records")
    usable = meta[meta["reason"] == ""]
    if usable.empty:
        top = meta["reason"].value_counts().index[0] if len(meta) else "no rows"
        raise ConfigError(f"input: no row fits training (max_length={max_length}; e.g. {top})")
    n_val = val_count(val_size, len(usable))
    threshold = int(usable["split_key"].nsmallest(n_val).iloc[-1])
    ok = tokenized.filter(lambda r: r["reason"] == "")
    val = ok.filter(lambda r: r["split_key"] <= threshold).select_columns(TRAIN_COLUMNS).materialize()
    train = ok.filter(lambda r: r["split_key"] > threshold).select_columns(TRAIN_COLUMNS).materialize()
    train_rows = train.count()
    if train_rows == 0:
        raise ConfigError("val_size: every usable row went to validation (they are all one pair); lower val_size")
    return Splits(train=train, val=val, rejected=rejected, rows_in=len(meta), train_rows=train_rows,
                  val_rows=val.count(), train_tokens=int(usable["num_tokens"].sum()))


def _tokenize_usable(batch, *, tokenizer_path: str, template_json: str, max_length: int, seed: int):
    """tokenize_batch on the usable rows of a pandas batch; unusable rows keep their reason."""
    import pandas as pd

    batch = batch.reset_index(drop=True)
    batch["split_key"] = [split_key(r, seed) for r in batch[["prompt", "context", "optimized_prompt"]].to_dict("records")]
    good = batch[batch["reason"] == ""]
    bad = batch[batch["reason"] != ""]
    parts = []
    if len(good):
        out = pd.DataFrame(tokenize_batch({c: good[c].tolist() for c in good.columns},
                                          tokenizer_path=tokenizer_path, template_json=template_json,
                                          max_length=max_length))
        out["reason"] = out["reject_reason"]
        parts.append(out.drop(columns=["reject_reason"]))
    if len(bad):
        bad = bad.copy()
        for name in TRAIN_COLUMNS:
            bad[name] = [[] for _ in range(len(bad))]
        bad["num_tokens"] = 0
        bad["prompt_truncated"] = False
        bad["target_truncated"] = False
        parts.append(bad)
    return pd.concat(parts, ignore_index=True)


def reason_counts(rows) -> tuple[dict[str, int], dict[str, int]]:
    """({'ok': n, 'rejected': m}, {reason: count}) over a Ray Dataset of pair rows."""
    if rows.count() == 0:  # no rows, no schema: there is no column to select
        return {"ok": 0, "rejected": 0}, {}
    reasons = rows.select_columns(["reason"]).to_pandas()["reason"].value_counts().to_dict()
    ok = int(reasons.pop("", 0))
    return {"ok": ok, "rejected": int(sum(reasons.values()))}, {str(k): int(v) for k, v in reasons.items()}


def write_rejected(output: str, rejected: list[dict]) -> str | None:
    """DIR/rejected.jsonl with (id, source, reason) per unusable row; None when there are none."""
    if not rejected:
        return None
    fs, base = filesystem_and_path(output)
    fs.create_dir(base, recursive=True)
    path = f"{base.rstrip('/')}/rejected.jsonl"
    with fs.open_output_stream(path) as out:
        out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected).encode())
    return path
