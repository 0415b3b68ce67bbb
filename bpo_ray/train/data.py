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
from typing import Any

from bpo_ray.data.files import input_files, read_rows  # noqa: F401 (input_files re-exported)
from bpo_ray.data.ledger import filesystem_and_path
from bpo_ray.data.rows import STATUS_OK, STATUS_REJECTED, count_reasons
from bpo_ray.errors import ConfigError
from bpo_ray.optimizer_template import OptimizerTemplate
from bpo_ray.train.config import PairFields
from bpo_ray.train.tokenize import tokenize_batch

ROW_COLUMNS = ["id", "prompt", "context", "optimized_prompt", "source", "status", "reason"]
TRAIN_COLUMNS = ["input_ids", "labels", "attention_mask"]
MISSING = "missing field"


def read_pairs(paths: list[str], fields: PairFields, *, limit: int | None = None):
    """A Ray Dataset of rows (id, prompt, context, optimized_prompt, source, status, reason)."""
    rows = read_rows(paths, _pair_row, fields=fields.model_dump())
    return rows.limit(limit) if limit else rows


def _pair_row(record: Any, *, source: str, index: int, fields: dict) -> dict:
    return normalize_pair(record, source=source, index=index, fields=PairFields.model_validate(fields))


def normalize_pair(record: Any, *, source: str, index: int, fields: PairFields) -> dict:
    """One uniform row; same columns and types for every row, usable or not."""
    where = f"{PurePosixPath(source).name}:{index}"
    row = {"id": where, "prompt": "", "context": "", "optimized_prompt": "", "source": where,
           "status": STATUS_OK, "reason": ""}
    if not isinstance(record, dict):
        return {**row, "status": STATUS_REJECTED, "reason": f"row {index} is not an object"}
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
    if problems:
        return {**row, "status": STATUS_REJECTED, "reason": "; ".join(problems)}
    return row


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
    from ray.data.expressions import col

    tokenized = rows.map_batches(
        _tokenize_usable,
        fn_kwargs={"tokenizer_path": tokenizer_path, "template_json": template.model_dump_json(),
                   "max_length": max_length, "seed": seed},
        batch_format="pandas",
    ).materialize()
    meta = tokenized.select_columns(["id", "source", "status", "reason", "split_key", "num_tokens"]).to_pandas()
    rejected = meta[meta["status"] != STATUS_OK][["id", "source", "reason"]].to_dict("records")
    usable = meta[meta["status"] == STATUS_OK]
    if usable.empty:
        top = next(iter(count_reasons(meta["reason"])), "no rows")
        raise ConfigError(f"input: no row fits training (max_length={max_length}; e.g. {top})")
    n_val = val_count(val_size, len(usable))
    threshold = int(usable["split_key"].nsmallest(n_val).iloc[-1])
    ok = tokenized.filter(expr=col("status") == STATUS_OK)
    val = ok.filter(expr=col("split_key") <= threshold).select_columns(TRAIN_COLUMNS).materialize()
    train = ok.filter(expr=col("split_key") > threshold).select_columns(TRAIN_COLUMNS).materialize()
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
    good = batch[batch["status"] == STATUS_OK]
    bad = batch[batch["status"] != STATUS_OK]
    parts = []
    if len(good):
        out = pd.DataFrame(tokenize_batch({c: good[c].tolist() for c in good.columns},
                                          tokenizer_path=tokenizer_path, template_json=template_json,
                                          max_length=max_length))
        out["reason"] = out["reject_reason"]
        out["status"] = [STATUS_REJECTED if r else STATUS_OK for r in out["reason"]]
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
    """({'ok': n, 'rejected': m}, {full reason: count}) over a Ray Dataset of pair rows."""
    if rows.count() == 0:  # no rows, no schema: there is no column to select
        return {STATUS_OK: 0, STATUS_REJECTED: 0}, {}
    table = rows.select_columns(["status", "reason"]).to_pandas()
    bad = table[table["status"] != STATUS_OK]
    reasons = bad["reason"].value_counts().to_dict()
    return ({STATUS_OK: int(len(table) - len(bad)), STATUS_REJECTED: int(len(bad))},
            {str(k): int(v) for k, v in reasons.items()})


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
