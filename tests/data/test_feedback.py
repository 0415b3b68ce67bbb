"""Reading pairwise feedback: the public BPO shapes and bad input, without Ray."""

import json

import pytest

from bpo_ray.data.feedback import FeedbackFields, normalize_feedback, parse_records
from bpo_ray.errors import InputError

FIELDS = FeedbackFields()


def rows_of(path, **kw):
    records = parse_records(str(path), path.read_bytes())
    return [normalize_feedback(r, source=str(path), index=i, fields=FIELDS, max_input_chars=kw.get("max_chars", 32_000))
            for i, r in enumerate(records)]


def test_feedback_val_300(bpo_data):
    rows = rows_of(bpo_data / "feedback_val_300.json")
    assert len(rows) == 300 and all(r["status"] == "ok" for r in rows)
    raw = json.loads((bpo_data / "feedback_val_300.json").read_text())
    assert sum(1 for r in rows if r["context"].strip()) == sum(1 for r in raw if r.get("context", "").strip()) == 44
    assert rows[0]["instruction"] == raw[0]["instruction"] and rows[0]["good_res"] == raw[0]["good_res"]


def test_bpo_test_uses_prompt_as_instruction(bpo_data):
    rows = rows_of(bpo_data / "bpo_test.json")
    assert len(rows) == 200 and all(r["status"] == "ok" and r["instruction"] for r in rows)
    assert not any(r["has_context"] for r in rows)


def test_construction_examples(bpo_data):
    ctx = rows_of(bpo_data / "examples_ctx.json")
    no_ctx = rows_of(bpo_data / "examples_no_ctx.json")
    assert all(r["has_context"] for r in ctx) and not any(r["has_context"] for r in no_ctx)


def test_not_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("this is not json at all")
    with pytest.raises(InputError, match="broken.json: not valid JSON"):
        parse_records(str(bad), bad.read_bytes())


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"instruction": "a", "good_res": "g", "bad_res": "b"}\n{oops\n')
    with pytest.raises(InputError, match=r"rows.jsonl: line 2"):
        parse_records(str(bad), bad.read_bytes())


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    path = tmp_path / "mixed.jsonl"
    records = [
        {"instruction": "fine", "good_res": "g", "bad_res": "b"},
        {"instruction": "no good", "bad_res": "b"},
        {"instruction": "   ", "good_res": "g", "bad_res": "b"},
        {"instruction": "x" * 1_000_000, "good_res": "g", "bad_res": "b"},
        {"instruction": ["not", "text"], "good_res": "g", "bad_res": "b"},
        "just a string",
    ]
    path.write_text("\n".join(json.dumps(r) for r in records))
    rows = rows_of(path)
    assert len(rows) == len(records)
    reasons = [r["reason"] for r in rows]
    assert rows[0]["status"] == "ok" and reasons[0] == ""
    assert "missing field good_res" in reasons[1]
    assert reasons[2] == "empty instruction"
    assert "input too long: 1000002 characters" in reasons[3]
    assert "field instruction is list" in reasons[4]
    assert "not an object" in reasons[5]
    assert all(r["status"] == "rejected" for r in rows[1:])
    assert rows[1]["id"] == "mixed.jsonl:1"


def test_custom_field_names_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist([{"uid": 7, "q": "Why?", "win": "Because.", "lose": "No."}]), path)
    fields = FeedbackFields(id=["uid"], instruction=["q"], good=["win"], bad=["lose"])
    [row] = [normalize_feedback(r, source=str(path), index=i, fields=fields, max_input_chars=1000)
             for i, r in enumerate(parse_records(str(path), path.read_bytes()))]
    assert row == {**row, "id": "7", "instruction": "Why?", "good_res": "Because.", "bad_res": "No.", "status": "ok"}
