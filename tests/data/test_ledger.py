"""The ledger's writer: by count, by time from a thread, on the way out of a failed job, and
always in the declared schema."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from bpo_ray.data.ledger import TableWriter, done_keys, read_table

SCHEMA = pa.schema([("id", pa.string()), ("key", pa.string()), ("note", pa.string()), ("tokens", pa.int64())])


def rows(n, start=0):
    return [{"id": f"r{i}", "key": f"k{i}", "note": None, "tokens": i} for i in range(start, start + n)]


def test_flushes_by_time_while_the_job_waits(tmp_path):
    with TableWriter(str(tmp_path), "pairs", "parquet", schema=SCHEMA, flush_rows=1000, flush_s=0.2) as out:
        out.add(rows(3))
        time.sleep(0.8)  # no add(), no flush(): only the timer thread can have written
        assert read_table(str(tmp_path), "pairs", "parquet").num_rows == 3


def test_rows_are_written_when_the_job_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with TableWriter(str(tmp_path), "pairs", "jsonl", schema=SCHEMA, flush_rows=1000, flush_s=60) as out:
            out.add(rows(5))
            raise RuntimeError("the job died")
    assert done_keys(str(tmp_path), "jsonl", {"pairs": None}) == {f"k{i}" for i in range(5)}


def test_declared_schema_not_guessed_from_the_first_rows(tmp_path):
    with TableWriter(str(tmp_path), "pairs", "parquet", schema=SCHEMA, flush_rows=2) as out:
        out.add(rows(2))  # `note` is None in every row of this part
        out.add([{"id": "x", "key": "kx", "note": "text", "tokens": 7}])
    table = read_table(str(tmp_path), "pairs", "parquet")
    assert table.schema.field("note").type == pa.string() and table.num_rows == 3
