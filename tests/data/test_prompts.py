"""Reading prompt files: the public shapes (on the project's own fixtures), lists of turns and
bad input without Ray, then `read_prompts` on a local Ray. tests/data/test_public_data.py reads
the public test sets themselves."""

from __future__ import annotations

import json

import pytest

from bpo_ray.data.files import parse_records
from bpo_ray.data.prompts import (
    PROMPT_COLUMNS,
    PromptFields,
    first_user_turn,
    normalize_prompt,
    read_prompts,
)
from bpo_ray.errors import InputError

FIELDS = PromptFields()
MAX_CHARS = 32_000


def rows_of(path, *, fields=FIELDS, max_chars=MAX_CHARS, reserved=()):
    records = parse_records(str(path), path.read_bytes())
    return [normalize_prompt(r, source=str(path), index=i, fields=fields, max_input_chars=max_chars,
                             reserved=reserved)
            for i, r in enumerate(records)]


def one(record, *, source="/data/in.jsonl", index=0, fields=FIELDS, max_chars=MAX_CHARS, reserved=()):
    return normalize_prompt(record, source=source, index=index, fields=fields, max_input_chars=max_chars,
                            reserved=reserved)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- the public shapes ---------------------------------------------------------------------


def test_vicuna_shape(fixture_data):
    rows = rows_of(fixture_data / "testset_vicuna.jsonl")
    raw = parse_records("x.jsonl", (fixture_data / "testset_vicuna.jsonl").read_bytes())
    assert len(rows) == len(raw) == 4
    assert rows[0] == {
        "id": "1", "dataset": "testset_vicuna", "prompt": raw[0]["text"], "context": "",
        "source": "testset_vicuna.jsonl:0", "status": "ok", "reason": "",
        "question_id": 1, "text": raw[0]["text"], "category": "generic",
    }
    assert list(rows[0])[: len(PROMPT_COLUMNS)] == list(PROMPT_COLUMNS)
    assert all(type(r["question_id"]) is int for r in rows)  # carried with its own type
    assert [r["id"] for r in rows] == [str(r["question_id"]) for r in raw]
    assert [r["category"] for r in rows] == [r["category"] for r in raw]
    assert all(r["status"] == "ok" for r in rows)


def test_dolly_shape(fixture_data):
    rows = rows_of(fixture_data / "testset_dolly.json")
    raw = json.loads((fixture_data / "testset_dolly.json").read_text())
    assert len(rows) == len(raw) == 4 and all(r["status"] == "ok" for r in rows)
    assert rows[1] == {
        "id": "1", "dataset": "testset_dolly", "prompt": "How long is the trail?",
        "context": raw[1]["context"], "source": "testset_dolly.json:1", "status": "ok", "reason": "",
        "instruction": "How long is the trail?", "response": "12 km.", "category": "closed_qa", "idx": 1,
    }
    assert rows[1]["context"].startswith("The river trail runs 12 km")
    assert [r["context"] for r in rows] == [r["context"] for r in raw]
    assert [r["idx"] for r in rows] == [0, 1, 2, 3]
    assert [r["response"] for r in rows] == [r["response"] for r in raw]


def test_self_instruct_shape():
    record = {"id": "user_oriented_task_7", "category": "Gmail", "instruction": "Reply to the email politely.",
              "context": "Can we move our meeting to Thursday?", "output": "Of course, Thursday works."}
    row = one(record, source="/data/self_instruct_eval.json", index=7)
    assert row == {
        "id": "user_oriented_task_7", "dataset": "self_instruct_eval", "prompt": "Reply to the email politely.",
        "context": "Can we move our meeting to Thursday?", "source": "self_instruct_eval.json:7",
        "status": "ok", "reason": "",
        # `id` and `context` live in the row's own columns; everything else is carried.
        "category": "Gmail", "instruction": "Reply to the email politely.", "output": "Of course, Thursday works.",
    }


def test_bpo_test_shape_keeps_a_reserved_column_as_input(fixture_data):
    rows = rows_of(fixture_data / "pairs_bpo_test.json", reserved=("optimized_prompt",))
    raw = json.loads((fixture_data / "pairs_bpo_test.json").read_text())
    assert len(rows) == len(raw) == 6 and all(r["status"] == "ok" for r in rows)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in raw]
    assert [r["input_optimized_prompt"] for r in rows] == [r["optimized_prompt"] for r in raw]
    assert not any("optimized_prompt" in r for r in rows)
    assert [(r["good_res"], r["bad_res"]) for r in rows] == [(r["good_res"], r["bad_res"]) for r in raw]
    assert rows[2]["id"] == "pairs_bpo_test.json:2" and rows[2]["dataset"] == "pairs_bpo_test"
    assert all(r["context"] == "" for r in rows)
    # Without the reservation the column keeps its own name.
    assert rows_of(fixture_data / "pairs_bpo_test.json")[0]["optimized_prompt"] == raw[0]["optimized_prompt"]


def test_alpaca_input_is_the_context(fixture_data):
    rows = rows_of(fixture_data / "sft_alpaca.json")
    raw = json.loads((fixture_data / "sft_alpaca.json").read_text())
    assert [r["context"] for r in rows] == [r["input"] for r in raw]
    # An alias is carried under its own name too (like `instruction` and `text`).
    assert rows[2]["context"] == "Gecko" and rows[2]["input"] == "Gecko"
    assert rows[2]["instruction"] == rows[2]["prompt"] == raw[2]["instruction"]
    assert rows[0]["context"] == rows[0]["input"] == ""


def test_columns_the_row_writes_itself_are_renamed():
    row = one({"prompt": "Why?", "source": "alpaca-gpt4", "status": "draft", "reason": "n/a", "key": "k1",
               "dataset": "", "id": 12})
    assert row["source"] == "in.jsonl:0" and row["status"] == "ok" and row["reason"] == ""
    assert (row["input_source"], row["input_status"], row["input_reason"], row["input_key"]) == \
        ("alpaca-gpt4", "draft", "n/a", "k1")
    assert row["id"] == "12" and "input_id" not in row  # the id column holds it as text
    assert row["dataset"] == "in" and row["input_dataset"] == ""  # an empty name: the file's


def test_dataset_and_custom_fields():
    row = one({"dataset": "mine", "uid": 4, "q": "How?", "doc": "A doc."},
              fields=PromptFields(id=["uid"], prompt=["q"], context=["doc"]))
    assert row == {**row, "id": "4", "dataset": "mine", "prompt": "How?", "context": "A doc.", "status": "ok",
                   "uid": 4, "q": "How?"}
    with pytest.raises(ValueError, match="extra"):
        PromptFields(prompts=["q"])


# --- lists of turns ------------------------------------------------------------------------


def test_a_list_of_turns_gives_its_first_turn():
    row = one({"question_id": 81, "turns": ["first", "second"], "category": "writing"})
    assert (row["prompt"], row["status"], row["reason"]) == ("first", "ok", "")
    assert row["turns"] == ["first", "second"]


def test_chat_messages_give_the_first_user_turn():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert first_user_turn("messages", messages) == ("Hi", None)
    row = one({"turns": messages})
    assert (row["prompt"], row["status"]) == ("Hi", "ok") and row["turns"] == messages
    row = one({"messages": messages}, fields=PromptFields(prompt=["messages"]))
    assert (row["prompt"], row["status"]) == ("Hi", "ok") and row["messages"] == messages
    # A message without a role is the user's.
    assert first_user_turn("turns", [{"content": "Plain"}]) == ("Plain", None)


def test_turns_in_a_field_named_prompt_are_kept_as_input_prompt():
    row = one({"prompt": ["first", "second"]})
    assert (row["prompt"], row["status"]) == ("first", "ok")
    assert row["input_prompt"] == ["first", "second"]


@pytest.mark.parametrize("value, problem", [
    ([{"role": "system", "content": "Be brief."}], "field turns has no user turn with text content"),
    ([{"role": "user", "content": 3}], "field turns has no user turn with text content"),
    (["text", {"role": "user", "content": "Hi"}], "field turns is list, not text or a list of turns"),
    ([], "field turns is an empty list, not text or a list of turns"),
    (None, "field turns is NoneType, not text or a list of turns"),
])
def test_turns_that_hold_no_prompt(value, problem):
    assert first_user_turn("turns", value) == ("", problem)


# --- bad input -----------------------------------------------------------------------------


def test_bad_rows_are_rejected_naming_the_row_and_the_field(tmp_path):
    records = [
        {"prompt": "fine", "context": "ok"},
        {"prompt": 5},
        {"prompt": []},
        {"question_id": 3, "category": "x"},
        {"prompt": "  "},
        {"prompt": "Summarize.", "context": {"text": "a dict"}},
        "just a string",
        {"prompt": "x" * 90, "context": "y" * 20},
        {"prompt": "x" * 90, "context": "y" * 10},
    ]
    rows = rows_of(write_jsonl(tmp_path / "bad.jsonl", records), max_chars=100)
    assert len(rows) == len(records)
    assert [r["status"] for r in rows] == ["ok"] + ["rejected"] * 7 + ["ok"]
    reasons = [r["reason"] for r in rows]
    assert reasons[0] == reasons[8] == ""
    assert reasons[1] == "row bad.jsonl:1: field prompt is int, not text or a list of turns"
    assert reasons[2] == "row bad.jsonl:2: field prompt is an empty list, not text or a list of turns"
    assert reasons[3] == "row bad.jsonl:3: missing field prompt (looked for prompt, instruction, text, question, turns)"
    assert reasons[4] == "row bad.jsonl:4: empty prompt (field prompt)"
    assert reasons[5] == "row bad.jsonl:5: field context is dict, not text"
    assert "not an object" in reasons[6]
    assert reasons[7] == "row bad.jsonl:7: input too long: 110 characters > max_input_chars 100"
    # Every rejected row still names its place and keeps its input.
    assert [r["source"] for r in rows] == [f"bad.jsonl:{i}" for i in range(len(records))]
    assert rows[6]["id"] == "bad.jsonl:6"
    assert rows[3]["id"] == "3" and rows[3]["question_id"] == 3
    assert rows[1]["input_prompt"] == 5 and rows[5]["input_context"] == {"text": "a dict"}
    assert rows[4]["prompt"] == "  "


def test_several_problems_are_all_named():
    row = one({"instruction": "", "input": 7}, index=4)
    assert row["status"] == "rejected"
    assert row["reason"] == "row in.jsonl:4: empty prompt (field instruction); field input is int, not text"


def test_a_null_context_is_no_context():
    row = one({"prompt": "Hi", "context": None})
    assert (row["context"], row["status"]) == ("", "ok") and "input_context" not in row


# --- read_prompts on Ray -------------------------------------------------------------------


MIXED = [
    {"id": "a", "prompt": "Summarize the text.", "context": "First text."},
    {"id": "b", "prompt": "Summarize the text.", "context": "Second text."},
    {"id": "c", "instruction": "Name three owls.", "category": "open_qa"},
    {"id": "d", "turns": ["Plan a trip.", "Make it cheaper."]},
    {"id": "e", "prompt": 5},
    {"id": "f", "prompt": []},
    {"id": "g", "prompt": ["one", "two"]},
    {"id": "h"},
    {"id": "i", "prompt": "   "},
    "not an object",
    {"id": "k", "prompt": "x" * 500},
    {"id": "l", "prompt": "   "},
]
REJECTED = {"e", "f", "h", "i", "mixed.jsonl:9", "k", "l"}


def read(paths, salt="salt-1", **kw):
    return sorted(read_prompts([str(p) for p in paths], FIELDS, max_input_chars=kw.pop("max_chars", 200),
                               key_salt=salt, **kw).take_all(), key=lambda r: r["source"])


def test_read_prompts_mixed_good_and_bad_rows(tmp_path, ray_local):
    path = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    rows = read([path])
    assert len(rows) == len(MIXED)
    assert {r["id"] for r in rows if r["status"] == "rejected"} == REJECTED
    assert all(r["reason"] for r in rows if r["status"] == "rejected")
    assert all(r["reason"] == "" for r in rows if r["status"] == "ok")
    by_id = {r["id"]: r for r in rows}
    assert by_id["d"]["prompt"] == "Plan a trip." and list(by_id["d"]["turns"]) == ["Plan a trip.", "Make it cheaper."]
    assert by_id["g"]["prompt"] == "one"
    # `input_prompt` holds a number in one record and lists in others: Arrow wants one type
    # per column, so every value of it is kept as JSON text.
    assert [by_id[i]["input_prompt"] for i in "efg"] == ["5", "[]", '["one", "two"]']
    assert by_id["a"]["input_prompt"] is None
    assert by_id["c"]["category"] == "open_qa" and by_id["a"]["category"] is None  # columns filled in
    assert by_id["a"]["dataset"] == "mixed"
    # Keys: one per row, even for the two identical broken rows (i and l).
    assert len({r["key"] for r in rows}) == len(rows)
    # The context is part of the key; so is the salt.
    assert by_id["a"]["key"] != by_id["b"]["key"]
    again = {r["id"]: r["key"] for r in read([path])}
    assert again == {r["id"]: r["key"] for r in rows}  # stable
    salted = {r["id"]: r["key"] for r in read([path], salt="salt-2")}
    assert all(salted[i] != by_id[i]["key"] for i in salted)


def test_read_prompts_reserved_columns(tmp_path, ray_local):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Why?", "optimized_prompt": "Why, exactly?"}])
    [row] = read([path], reserved=("optimized_prompt",))
    assert row["input_optimized_prompt"] == "Why, exactly?" and "optimized_prompt" not in row


def test_read_prompts_not_json_names_the_file_and_line(tmp_path, ray_local):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "fine"}\n{oops\n')
    dataset = read_prompts([str(bad)], FIELDS, max_input_chars=200, key_salt="s")  # lazy: no error yet
    with pytest.raises(InputError, match=r"broken.jsonl: line 2: not valid JSON"):
        dataset.materialize()
    html = tmp_path / "page.json"
    html.write_text("<html>not json</html>")
    with pytest.raises(InputError, match=r"page.json: not valid JSON \(line 1"):
        read_prompts([str(html)], FIELDS, max_input_chars=200, key_salt="s").take_all()


def test_read_prompts_missing_path(tmp_path, ray_local):
    with pytest.raises(InputError, match="missing.jsonl: no such file"):
        read_prompts([str(tmp_path / "missing.jsonl")], FIELDS, max_input_chars=200, key_salt="s")
