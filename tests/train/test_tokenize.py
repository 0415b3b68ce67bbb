"""Training examples: exact loss masking, truncation that keeps the target, padding, Ray Data step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from bpo_ray.optimizer_template import OUTPUT_MARKER, OptimizerTemplate
from bpo_ray.train.tokenize import (
    IGNORE_INDEX, MIN_PROMPT_TOKENS, collate, fit_pair, load_tokenizer, pad_id_of, tokenize_batch,
)

TARGET = "Explain, step by step and with one worked example, how owls hunt at night."
STYLES = [OptimizerTemplate(), OptimizerTemplate(style="chat")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def tokenize_pair(*args, **kwargs):
    """`fit_pair`, with None in place of a rejection's reason."""
    result = fit_pair(*args, **kwargs)
    return None if isinstance(result, str) else result


def prompt_len(example) -> int:
    """Positions before the first label with loss; asserts the loss part is one suffix."""
    labels = example["labels"]
    start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label != IGNORE_INDEX for label in labels[start:])
    assert labels[start:] == example["input_ids"][start:]
    return start


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_invariants(tokenizer, template, prompt, context, target, example, max_length):
    """What every example must satisfy, truncated or not."""
    n = len(example["input_ids"])
    assert n <= max_length and len(example["labels"]) == n and example["attention_mask"] == [1] * n
    p = prompt_len(example)
    assert p > 0 and example["input_ids"][-1] == tokenizer.eos_token_id
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if example["target_truncated"]:
        kept = example["input_ids"][p:-1]
        assert kept == target_ids[:len(kept)] and len(kept) < len(target_ids)
    else:
        assert example["input_ids"][p:] == target_ids + [tokenizer.eos_token_id]
    if not example["prompt_truncated"]:
        assert example["input_ids"][:p] == template.encode(tokenizer, prompt, context)


@pytest.mark.parametrize("template", STYLES, ids=["instruction", "chat"])
def test_loss_covers_exactly_the_target_and_eos(tokenizer, template):
    example = tokenize_pair(tokenizer, template, "owls?", "Barn owls.", TARGET, max_length=512)
    p = prompt_len(example)
    assert decode(tokenizer, example["input_ids"][p:]) == TARGET + tokenizer.eos_token
    assert example["input_ids"][:p] == template.encode(tokenizer, "owls?", "Barn owls.")
    assert decode(tokenizer, example["input_ids"][:p]) == template.render(tokenizer, "owls?", "Barn owls.")
    assert not example["prompt_truncated"] and not example["target_truncated"]
    check_invariants(tokenizer, template, "owls?", "Barn owls.", TARGET, example, 512)


@pytest.mark.parametrize("template", STYLES, ids=["instruction", "chat"])
def test_a_long_prompt_is_cut_in_the_middle_and_the_target_kept(tokenizer, template):
    prompt = "HEAD: what do owls eat? " + "filler " * 400 + "TAIL: answer briefly."
    example = tokenize_pair(tokenizer, template, prompt, "", TARGET, max_length=512)
    assert example["prompt_truncated"] and not example["target_truncated"]
    assert len(example["input_ids"]) == 512  # byte tokens: the budget is used to the last token
    p = prompt_len(example)
    assert decode(tokenizer, example["input_ids"][p:]) == TARGET + tokenizer.eos_token
    shown = decode(tokenizer, example["input_ids"][:p])
    assert "HEAD: what" in shown and "answer briefly." in shown and len(shown) < len(prompt)
    # The template around the shortened text is whole.
    if template.style == "chat":
        assert shown.startswith("<|im_start|>user\n" + template.instruction)
        assert shown.endswith("<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert shown.startswith(template.instruction) and shown.endswith(f"\n\n{OUTPUT_MARKER}\n")
    check_invariants(tokenizer, template, prompt, "", TARGET, example, 512)


def test_a_long_context_is_shortened_too(tokenizer):
    template = OptimizerTemplate()
    context = "The data: " + "1, 2, 3, " * 200
    example = tokenize_pair(tokenizer, template, "Sum the numbers.", context, TARGET, max_length=500)
    assert example["prompt_truncated"] and len(example["input_ids"]) == 500
    assert "Sum the numbers." in decode(tokenizer, example["input_ids"][:prompt_len(example)])


def test_a_too_long_target_loses_its_tail_but_keeps_eos(tokenizer):
    template = OptimizerTemplate()
    target = "Describe owls. " * 60
    prompt = "Tell me everything about owls " * 10
    example = tokenize_pair(tokenizer, template, prompt, "", target, max_length=400)
    assert example["target_truncated"] and example["prompt_truncated"]
    assert len(example["input_ids"]) == 400 and example["labels"][-1] == tokenizer.eos_token_id
    p = prompt_len(example)
    kept = decode(tokenizer, example["input_ids"][p:-1])
    assert target.startswith(kept) and len(kept) > 100
    # The prompt shrank to its floor first: MIN_PROMPT_TOKENS user tokens inside the template.
    overhead = len(template.encode(tokenizer, ""))
    assert p == overhead + MIN_PROMPT_TOKENS
    check_invariants(tokenizer, template, prompt, "", target, example, 400)


def test_a_short_prompt_stays_whole_when_the_target_is_cut(tokenizer):
    template = OptimizerTemplate(style="chat")
    example = tokenize_pair(tokenizer, template, "owls?", "", "Owls. " * 100, max_length=300)
    assert example["target_truncated"] and not example["prompt_truncated"]
    assert example["input_ids"][:prompt_len(example)] == template.encode(tokenizer, "owls?")


def test_pairs_that_cannot_fit_are_rejected_with_a_reason(tokenizer):
    template = OptimizerTemplate()
    overhead = len(template.encode(tokenizer, ""))
    tight = overhead + MIN_PROMPT_TOKENS + 4  # room for 3 target tokens + EOS
    assert tokenize_pair(tokenizer, template, "x" * 500, "", TARGET, max_length=tight) is None
    reason = fit_pair(tokenizer, template, "x" * 500, "", TARGET, max_length=tight)
    assert f"max_length={tight}" in reason
    assert fit_pair(tokenizer, template, "owls?", "", "  ", max_length=512) == "empty target (optimized prompt)"
    assert fit_pair(tokenizer, template, "", "", TARGET, max_length=512) == "empty prompt"
    # min_target_tokens is the line between cutting and rejecting.
    assert tokenize_pair(tokenizer, template, "x" * 500, "", TARGET, max_length=tight, min_target_tokens=3)


def test_every_feedback_pair_is_masked_exactly(tokenizer, fixture_data):
    rows = json.loads((fixture_data / "feedback_24.json").read_text())
    counts = {"ok": 0, "prompt_truncated": 0, "target_truncated": 0, "rejected": 0}
    for template in STYLES:
        for row in rows:
            prompt, context, target = row["instruction"], row.get("context", ""), row["optimized_prompt"]
            example = tokenize_pair(tokenizer, template, prompt, context, target, max_length=512)
            if example is None:
                counts["rejected"] += 1
                continue
            check_invariants(tokenizer, template, prompt, context, target, example, 512)
            counts["ok"] += 1
            counts["prompt_truncated"] += example["prompt_truncated"]
            counts["target_truncated"] += example["target_truncated"]
    # Byte tokens make the long rows overflow 512: both truncation paths are exercised here.
    assert counts["ok"] == 2 * len(rows) and counts["prompt_truncated"] >= 6 and counts["target_truncated"] > 0


def test_collate_right_pads_each_field(tokenizer):
    a = {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8], "attention_mask": [1] * 4}
    b = {"input_ids": [9, 10], "labels": [IGNORE_INDEX, 10], "attention_mask": [1, 1]}
    pad = pad_id_of(tokenizer)
    assert pad == tokenizer.pad_token_id
    out = collate([a, b], pad)
    assert set(out) == {"input_ids", "labels", "attention_mask"}
    assert all(t.dtype == torch.long and t.shape == (2, 4) for t in out.values())
    assert out["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, pad, pad]]
    assert out["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert collate([a, b], pad, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)


def test_collate_takes_a_ray_column_batch(tokenizer):
    rows = [tokenize_pair(tokenizer, OptimizerTemplate(), p, "", TARGET, max_length=512) for p in ("a", "owls??")]
    columns = {name: np.array([np.array(r[name]) for r in rows], dtype=object)
               for name in ("input_ids", "labels", "attention_mask")}
    from_rows, from_columns = collate(rows, 0), collate(columns, 0)
    for name in from_rows:
        assert torch.equal(from_rows[name], from_columns[name])


def test_collate_rejects_bad_rows():
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)
    with pytest.raises(ValueError, match="reject_reason"):
        collate([{"input_ids": [], "labels": [], "attention_mask": []}], 0)
    with pytest.raises(ValueError, match="labels"):
        collate([{"input_ids": [1, 2], "labels": [1], "attention_mask": [1, 1]}], 0)


def test_tokenize_batch_keeps_one_row_per_input(tiny_model_dir):
    template = OptimizerTemplate(style="chat")
    batch = {
        "id": np.array(["r1", "r2", "r3"]),
        "prompt": np.array(["owls?", "bats?", "cats?"]),
        "context": np.array(["", "", "Tabby cats."]),
        "optimized_prompt": np.array([TARGET, "", "Describe tabby cats."]),
    }
    out = tokenize_batch(batch, tokenizer_path=str(tiny_model_dir), template_json=template.model_dump_json(),
                         max_length=512)
    assert list(out["id"]) == ["r1", "r2", "r3"]
    assert out["reject_reason"] == ["", "empty target (optimized prompt)", ""]
    assert out["input_ids"][1] == [] and out["num_tokens"][1] == 0
    tok = load_tokenizer(str(tiny_model_dir))
    assert load_tokenizer(str(tiny_model_dir)) is tok  # one load per process
    expected = tokenize_pair(tok, template, "cats?", "Tabby cats.", "Describe tabby cats.", max_length=512)
    assert out["input_ids"][2] == expected["input_ids"] and out["labels"][2] == expected["labels"]
    assert out["num_tokens"][2] == len(expected["input_ids"])

    # What Ray Data makes of the batch: token lists become list<int64> columns.
    from ray.data.block import BlockAccessor

    table = BlockAccessor.batch_to_block(out)
    assert table.num_rows == 3 and str(table.schema.field("input_ids").type) == "list<item: int64>"
    kept = [row for row in table.to_pylist() if not row["reject_reason"]]
    assert collate(kept, 0)["input_ids"].shape[0] == 2


@pytest.fixture(scope="module")
def embedded_tokenizer():
    from bpo_ray.models.embedded import embedded_model_path

    return AutoTokenizer.from_pretrained(embedded_model_path())


@pytest.mark.slow
@pytest.mark.parametrize("template", STYLES, ids=["instruction", "chat"])
def test_masking_is_exact_with_the_embedded_models_tokenizer(embedded_tokenizer, template, fixture_data):
    tok = embedded_tokenizer
    rows = json.loads((fixture_data / "feedback_24.json").read_text())
    whole = 0
    for row in rows:
        prompt, context, target = row["instruction"], row.get("context", ""), row["optimized_prompt"]
        example = tokenize_pair(tok, template, prompt, context, target, max_length=512)
        check_invariants(tok, template, prompt, context, target, example, 512)
        if not example["target_truncated"]:
            whole += 1
            assert decode(tok, example["input_ids"][prompt_len(example):]) == target + tok.eos_token
    assert whole == len(rows)  # real subword tokens: every fixture row fits whole

    prompt = "HEAD: what do owls eat? " + "filler words " * 400 + "TAIL: answer briefly."
    example = tokenize_pair(tok, template, prompt, "", TARGET, max_length=512)
    assert example["prompt_truncated"] and not example["target_truncated"]
    assert 500 <= len(example["input_ids"]) <= 512
    shown = decode(tok, example["input_ids"][:prompt_len(example)])
    assert "HEAD: what" in shown and "answer briefly." in shown
    assert shown.endswith(template.render(tok, "x").rsplit("x", 1)[1])  # the template's tail is whole
    assert decode(tok, example["input_ids"][prompt_len(example):]) == TARGET + tok.eos_token
