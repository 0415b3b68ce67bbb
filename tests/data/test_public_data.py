"""The public BPO data itself (thu-coai/BPO, Apache-2.0): counts, ids and fields, read through
the project's own readers. Skipped where the data is absent (a bare clone), required in CI."""

from __future__ import annotations

import collections

import pytest

from bpo_ray.data.feedback import FeedbackFields, normalize_feedback, parse_records
from bpo_ray.data.public import FILES, is_pinned

pytestmark = pytest.mark.public_data

FIELDS = FeedbackFields()


def records(path):
    return parse_records(str(path), path.read_bytes())


def rows_of(path):
    return [normalize_feedback(r, source=str(path), index=i, fields=FIELDS, max_input_chars=32_000)
            for i, r in enumerate(records(path))]


def test_the_files_are_the_pinned_ones(bpo_data):
    assert {name: is_pinned(name, bpo_data / spec.filename) for name, spec in FILES.items()} == dict.fromkeys(FILES, True)


def test_vicuna_eval(bpo_data):
    rows = records(bpo_data / "vicuna_eval.jsonl")
    assert len(rows) == 80 and [r["question_id"] for r in rows] == list(range(1, 81))
    assert all(set(r) == {"question_id", "text", "category"} and r["text"].strip() for r in rows)
    assert collections.Counter(r["category"] for r in rows)["writing"] == 10
    # The reader's aliases take `text` as the instruction and `question_id` as the id.
    first = normalize_feedback({**rows[0], "good_res": "", "bad_res": ""}, source="vicuna_eval.jsonl", index=0,
                               fields=FIELDS, max_input_chars=32_000)
    assert first["id"] == "1" and first["instruction"] == rows[0]["text"]


def test_self_instruct_eval(bpo_data):
    rows = records(bpo_data / "self_instruct_eval.json")
    assert len(rows) == 252 and [r["id"] for r in rows] == [f"user_oriented_task_{i}" for i in range(252)]
    assert all(set(r) == {"id", "category", "instruction", "context", "output"} for r in rows)
    assert sum(1 for r in rows if r["context"].strip()) == 208


def test_dolly_eval(bpo_data):
    rows = records(bpo_data / "dolly_eval.json")
    assert len(rows) == 200 and [r["idx"] for r in rows] == list(range(200))
    assert all(set(r) == {"instruction", "context", "response", "category", "idx"} for r in rows)


def test_bpo_test(bpo_data):
    raw = records(bpo_data / "bpo_test.json")
    assert len(raw) == 200 and all(set(r) == {"prompt", "optimized_prompt", "good_res", "bad_res"} for r in raw)
    rows = rows_of(bpo_data / "bpo_test.json")
    assert all(r["status"] == "ok" for r in rows)
    assert [r["instruction"] for r in rows] == [r["prompt"] for r in raw]
    assert not any(r["has_context"] for r in rows)


def test_feedback_val_300(bpo_data):
    raw = records(bpo_data / "feedback_val_300.json")
    assert len(raw) == 300 and len({r["instruction"] for r in raw}) == 300
    required = {"instruction", "good_res", "bad_res", "comparison", "optimized_prompt", "final_input",
                "final_output", "source"}
    assert all(required <= set(r) <= required | {"context", "good_model", "bad_model"} for r in raw)
    arena = [r for r in raw if "good_model" in r]  # Chatbot Arena rows name the two models
    assert len(arena) == 99 and all("bad_model" in r and r["source"] == "Chatbot_Arena_Conversation" for r in arena)
    assert collections.Counter(r["source"] for r in raw) == {
        "Chatbot_Arena_Conversation": 99, "alpaca-gpt4": 98, "oasst1": 63, "hh-rlhf": 40}
    rows = rows_of(bpo_data / "feedback_val_300.json")
    assert all(r["status"] == "ok" for r in rows)
    assert sum(1 for r in rows if r["context"].strip()) == 44
    # A context key counts even when empty (98 rows carry one); the others have none.
    assert sum(r["has_context"] for r in rows) == sum("context" in r for r in raw) == 98
    assert [(r["instruction"], r["good_res"], r["bad_res"]) for r in rows] == \
        [(r["instruction"], r["good_res"], r["bad_res"]) for r in raw]


def test_construction_examples(bpo_data):
    ctx, no_ctx = rows_of(bpo_data / "examples_ctx.json"), rows_of(bpo_data / "examples_no_ctx.json")
    assert len(ctx) == len(no_ctx) == 2 and all(r["status"] == "ok" for r in ctx + no_ctx)
    assert all(set(r) == {"instruction", "context", "good_res", "bad_res"} for r in records(bpo_data / "examples_ctx.json"))
    assert all(set(r) == {"instruction", "good_res", "bad_res"} for r in records(bpo_data / "examples_no_ctx.json"))
    assert all(r["has_context"] for r in ctx) and not any(r["has_context"] for r in no_ctx)
