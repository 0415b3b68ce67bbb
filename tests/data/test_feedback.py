"""Reading pairwise feedback: the public BPO shapes (on the project's own fixtures) and bad
input, without Ray. tests/data/test_public_data.py reads the public files themselves."""

import json

import pytest

from bpo_ray.data.feedback import FeedbackFields, normalize_feedback, parse_records
from bpo_ray.errors import InputError

FIELDS = FeedbackFields()


def rows_of(path, **kw):
    records = parse_records(str(path), path.read_bytes())
    return [normalize_feedback(r, source=str(path), index=i, fields=FIELDS, max_input_chars=kw.get("max_chars", 32_000))
            for i, r in enumerate(records)]


def test_feedback_rows_keep_their_fields(fixture_data):
    rows = rows_of(fixture_data / "feedback_24.json")
    raw = json.loads((fixture_data / "feedback_24.json").read_text())
    assert len(rows) == len(raw) == 24 and all(r["status"] == "ok" for r in rows)
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in raw]
    assert [(r["good_res"], r["bad_res"]) for r in rows] == [(r["good_res"], r["bad_res"]) for r in raw]
    assert sum(1 for r in rows if r["context"].strip()) == sum(1 for r in raw if r["context"].strip()) == 6
    # An empty context key still counts as context, as in the original pipeline.
    assert all(r["has_context"] for r in rows)
    assert rows[0]["id"] == "feedback_24.json:0" and rows[0]["source"] == "feedback_24.json:0"


def test_field_aliases(tmp_path):
    path = tmp_path / "aliases.jsonl"
    records = [{"idx": 3, "prompt": "Why?", "input": "Because.", "chosen": "Good.", "rejected": "Bad."},
               {"question_id": 9, "question": "How?", "good_response": "Well.", "bad_response": "Badly."}]
    path.write_text("\n".join(json.dumps(r) for r in records))
    first, second = rows_of(path)
    assert first == {**first, "id": "3", "instruction": "Why?", "context": "Because.", "has_context": True,
                     "good_res": "Good.", "bad_res": "Bad.", "status": "ok"}
    assert second == {**second, "id": "9", "instruction": "How?", "context": "", "has_context": False,
                      "good_res": "Well.", "bad_res": "Badly.", "status": "ok"}


def test_bpo_test_shape_uses_prompt_as_instruction(fixture_data):
    rows = rows_of(fixture_data / "pairs_bpo_test.json")
    raw = json.loads((fixture_data / "pairs_bpo_test.json").read_text())
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert [r["instruction"] for r in rows] == [r["prompt"] for r in raw]
    assert not any(r["has_context"] for r in rows)


def test_has_context_follows_the_context_key(fixture_data):
    ctx = rows_of(fixture_data / "feedback_ctx.json")
    no_ctx = rows_of(fixture_data / "feedback_no_ctx.json")
    assert len(ctx) == len(no_ctx) == 2
    assert all(r["has_context"] and r["context"] for r in ctx)
    assert not any(r["has_context"] or r["context"] for r in no_ctx)


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
