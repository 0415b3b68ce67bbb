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


# --- the public test sets through read_prompts (one Ray Dataset over all four) ---------------

TEST_SETS = {"vicuna_eval": ("vicuna_eval.jsonl", 80), "dolly_eval": ("dolly_eval.json", 200),
             "self_instruct_eval": ("self_instruct_eval.json", 252), "bpo_test": ("bpo_test.json", 200)}


@pytest.fixture(scope="module")
def prompt_rows(bpo_data, ray_local):
    """{dataset: rows in file order}: the four test sets read as they are, in one call, though
    their columns differ."""
    from bpo_ray.data.prompts import PromptFields, read_prompts

    paths = [str(bpo_data / name) for name, _ in TEST_SETS.values()]
    rows = read_prompts(paths, PromptFields(), max_input_chars=32_000, key_salt="public",
                        reserved=("optimized_prompt",)).take_all()
    out = collections.defaultdict(list)
    for row in rows:
        out[row["dataset"]].append(row)
    return {name: sorted(rs, key=lambda r: int(r["source"].rsplit(":", 1)[1])) for name, rs in out.items()}


def test_prompt_sets_read_as_they_are(bpo_data, prompt_rows):
    assert {name: len(rows) for name, rows in prompt_rows.items()} == {n: c for n, (_, c) in TEST_SETS.items()}
    for name, (filename, count) in TEST_SETS.items():
        rows = prompt_rows[name]
        assert [r["source"] for r in rows] == [f"{filename}:{i}" for i in range(count)]
        assert [r["reason"] for r in rows if r["status"] != "ok"] == []
        assert len({r["id"] for r in rows}) == count
        assert all(r["prompt"].strip() for r in rows)
        assert len({r["key"] for r in rows}) == len({(r["prompt"], r["context"]) for r in rows})


def test_prompt_sets_keep_ids_categories_and_contexts(bpo_data, prompt_rows):
    vicuna, dolly = records(bpo_data / "vicuna_eval.jsonl"), records(bpo_data / "dolly_eval.json")
    self_instruct, bpo_test = records(bpo_data / "self_instruct_eval.json"), records(bpo_data / "bpo_test.json")

    rows = prompt_rows["vicuna_eval"]
    assert [r["question_id"] for r in rows] == list(range(1, 81))
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 81)]
    assert [(r["prompt"], r["text"], r["category"], r["context"]) for r in rows] == \
        [(r["text"], r["text"], r["category"], "") for r in vicuna]

    rows = prompt_rows["dolly_eval"]
    assert [r["idx"] for r in rows] == [r["idx"] for r in dolly] == list(range(200))
    assert [r["id"] for r in rows] == [str(r["idx"]) for r in dolly]
    assert [(r["prompt"], r["context"], r["category"], r["response"]) for r in rows] == \
        [(r["instruction"], r["context"], r["category"], r["response"]) for r in dolly]
    assert sum(1 for r in rows if r["context"].strip()) == sum(1 for r in dolly if r["context"].strip()) > 0

    rows = prompt_rows["self_instruct_eval"]
    assert [r["id"] for r in rows] == [r["id"] for r in self_instruct]
    assert [(r["prompt"], r["context"], r["category"], r["output"]) for r in rows] == \
        [(r["instruction"], r["context"], r["category"], r["output"]) for r in self_instruct]
    assert sum(1 for r in rows if r["context"].strip()) == 208

    rows = prompt_rows["bpo_test"]
    assert [(r["prompt"], r["input_optimized_prompt"], r["good_res"], r["bad_res"]) for r in rows] == \
        [(r["prompt"], r["optimized_prompt"], r["good_res"], r["bad_res"]) for r in bpo_test]
    assert all(r["context"] == "" and r["id"] == r["source"] for r in rows)
