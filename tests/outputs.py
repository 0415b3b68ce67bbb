"""Small helpers the job tests share: write an input file, read a job's output table."""

from __future__ import annotations

import json
from pathlib import Path

from bpo_ray.data.ledger import read_table


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def table(out: Path, name: str) -> list[dict]:
    """Every row of DIR/<name> (Parquet), [] when the job wrote none."""
    data = read_table(str(out), name, "parquet")
    return [] if data is None else data.to_pylist()
