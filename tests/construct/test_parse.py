"""Parsing construction replies and the paper's filters: pure functions, no model."""

import pytest

from bpo_ray.construct.parse import parse_continuation, parse_reply
from bpo_ray.length_filter import LengthFilter
from bpo_ray.construct.prompts import TAG, construction_messages, repair_request


@pytest.mark.parametrize("reply, optimized", [
    ("Comparison: A is right.\nOptimized Instruction: Explain X step by step.", "Explain X step by step."),
    ("**Comparison:** fine\n\n**Optimized Instruction:** \"Explain X clearly.\"", "Explain X clearly."),
    ("### Optimized instruction：\nList three facts about Mars.", "List three facts about Mars."),
    ("Optimized Prompt: Write a poem.\nComparison: irrelevant trailer", "Write a poem."),
])
def test_finds_the_optimized_instruction(reply, optimized):
    parsed = parse_reply(reply)
    assert parsed is not None and parsed.optimized == optimized


def test_comparison_is_the_text_before_the_tag():
    parsed = parse_reply("Comparison: the good one cites sources.\nOptimized Instruction: Cite sources.")
    assert parsed.comparison == "the good one cites sources."


@pytest.mark.parametrize("reply", ["", "I think the first answer is better.", "Optimized Instruction:   ", None])
def test_no_tag_or_empty_instruction_is_none(reply):
    assert parse_reply(reply) is None


def test_continuation_gets_its_prefill_back():
    assert parse_continuation(TAG, " Describe the water cycle.").optimized == "Describe the water cycle."
    assert parse_continuation(None, "no tag here") is None


def test_length_filter_matches_the_paper():
    f = LengthFilter()
    assert f.check("a" * 100, "b" * 100) is None
    assert "original/optimized" in f.check("a" * 100, "b" * 49)
    assert f.check("a" * 100, "b" * 50) is None
    assert "optimized/original" in f.check("a" * 10, "b" * 61)
    assert f.check("a" * 10, "b" * 60) is None
    assert f.check("abc", "  ") == "optimized prompt is empty"


def test_context_variant_keeps_context_out_of_the_rewrite():
    with_ctx = construction_messages("Summarize.", "Some text.", "good", "bad", has_context=True)[0]["content"]
    without = construction_messages("Summarize.", "", "good", "bad", has_context=False)[0]["content"]
    assert "[Context]\nSome text." in with_ctx and "leave the context untouched" in with_ctx
    assert "[Context]" not in without and "leave the context untouched" not in without
    for text in (with_ctx, without):
        assert "correctness first" in text and TAG in text and "[Preferred response]\ngood" in text


def test_repair_round_is_short_and_pre_fills_the_tag_only_when_supported():
    row = {"instruction": "Summarize it.", "context": "Long text.", "has_context": True,
           "good_res": "GOOD ANSWER", "bad_res": "BAD ANSWER"}
    with_prefill = repair_request(row, prefill=True)
    assert with_prefill.prefill == TAG
    [message] = with_prefill.messages
    assert "Summarize it." in message["content"] and "context" in message["content"]
    assert "GOOD ANSWER" not in message["content"]  # nothing to copy from
    assert with_prefill.sampling["stop"] == ["\n\n"]
    assert repair_request(row, prefill=False).prefill is None


def test_instruction_ends_at_the_first_blank_line():
    assert parse_reply("Optimized Instruction: Explain X.\n\n1. X is ...").optimized == "Explain X."
