"""(prompt, optimized prompt) pairs -> masked training examples, and batches of them.

The loss covers the optimized prompt and EOS only: every prompt-side label is IGNORE_INDEX.
A pair longer than max_length keeps its whole target where it can and gives up the middle of
the user's prompt text instead, re-rendered through the template (cutting the rendered ids
would cut the template itself, e.g. a chat template's header). Only a target that leaves too
little room for even a short prompt loses its tail, and it keeps its EOS.

The optimizer learns to write the optimized prompt without the context: it sees the context
in its input, and the optimize stage joins the context back on with `join_context`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, TypedDict

import numpy as np
import torch

from bpo_ray.errors import ConfigError
from bpo_ray.optimizer_template import OptimizerTemplate

IGNORE_INDEX = -100
"""Label of positions without loss (PyTorch's cross-entropy default ignore_index)."""

MIN_PROMPT_TOKENS = 32
"""Fewest tokens of the user's text a shortened prompt keeps (all of it, if it has fewer)."""

MIN_TARGET_TOKENS = 16
"""Fewest target tokens (before EOS) a truncated target keeps; below that the pair is rejected."""


class Example(TypedDict):
    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    prompt_truncated: bool
    target_truncated: bool


def fit_pair(
    tokenizer: Any,
    template: OptimizerTemplate,
    prompt: str,
    context: str | None,
    target: str,
    *,
    max_length: int,
    min_prompt_tokens: int = MIN_PROMPT_TOKENS,
    min_target_tokens: int = MIN_TARGET_TOKENS,
) -> Example | str:
    """One training example no longer than max_length, or the reason the pair cannot fit
    meaningfully (a string)."""
    if not target or not target.strip():
        return "empty target (optimized prompt)"
    if not prompt or not prompt.strip():
        return "empty prompt"
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("tokenizer: it has no eos token, so the optimizer could never learn to stop")

    text = template.join_context(prompt, context)
    target_ids = _ids(tokenizer, target, False) + [eos]
    prompt_ids = _ids(tokenizer, template.wrap(tokenizer, text), template.add_special_tokens)
    if len(prompt_ids) + len(target_ids) <= max_length:
        return _example(prompt_ids, target_ids, prompt_truncated=False, target_truncated=False)

    user_ids = _ids(tokenizer, text, False)
    floor = min(min_prompt_tokens, len(user_ids))
    shortened = _shorten(tokenizer, template, user_ids, budget=max_length - len(target_ids), floor=floor)
    if shortened is not None:
        return _example(shortened, target_ids, prompt_truncated=True, target_truncated=False)

    # The target alone crowds out the prompt: keep the shortest prompt and cut the target's tail.
    shortest = prompt_ids if floor == len(user_ids) else _middle_cut_ids(tokenizer, template, user_ids, floor)
    room = max_length - len(shortest) - 1
    if room < max(1, min(min_target_tokens, len(target_ids) - 1)):
        return (f"does not fit max_length={max_length}: the prompt needs {len(shortest)} tokens even "
                f"shortened, leaving {max(room, 0)} for a target of {len(target_ids) - 1}")
    return _example(shortest, target_ids[:room] + [eos], prompt_truncated=floor < len(user_ids),
                    target_truncated=True)


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _example(prompt_ids: list[int], target_ids: list[int], *, prompt_truncated: bool,
             target_truncated: bool) -> Example:
    return Example(
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
        attention_mask=[1] * (len(prompt_ids) + len(target_ids)),
        prompt_truncated=prompt_truncated,
        target_truncated=target_truncated,
    )


def _middle_cut_ids(tokenizer: Any, template: OptimizerTemplate, user_ids: list[int], keep: int) -> list[int]:
    """The rendered prompt ids when the user's text keeps only `keep` tokens: its head and its
    tail, since the ask is usually at the start and the question at the end."""
    head, tail = (keep + 1) // 2, keep // 2
    kept = user_ids[:head] + (user_ids[len(user_ids) - tail:] if tail else [])
    text = tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return _ids(tokenizer, template.wrap(tokenizer, text), template.add_special_tokens)


def _shorten(tokenizer: Any, template: OptimizerTemplate, user_ids: list[int], *, budget: int,
             floor: int) -> list[int] | None:
    """Rendered prompt ids of at most `budget` tokens keeping at least `floor` user tokens."""
    overhead = len(_ids(tokenizer, template.wrap(tokenizer, ""), template.add_special_tokens))
    keep = min(len(user_ids) - 1, budget - overhead)
    while keep >= floor:
        ids = _middle_cut_ids(tokenizer, template, user_ids, keep)
        if len(ids) <= budget:
            return ids
        # Re-encoding the cut text can merge or split tokens at the seams: shrink by the excess.
        keep -= max(1, len(ids) - budget)
    return None


def pad_id_of(tokenizer: Any) -> int:
    """The id to pad with: the pad token, else EOS (padded positions are masked either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("tokenizer: it has neither a pad nor an eos token to pad batches with")
    return int(pad)


def collate(
    batch: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    pad_id: int,
    *,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad one batch to its longest example: input_ids with pad_id, labels with
    IGNORE_INDEX, attention_mask with 0. Takes a list of rows or a Ray Data column batch."""
    columns = ("input_ids", "labels", "attention_mask")
    if isinstance(batch, Mapping):
        rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
    else:
        rows = list(batch)
    if not rows:
        raise ValueError("collate: empty batch")
    lengths = [len(row["input_ids"]) for row in rows]
    if min(lengths) == 0:
        raise ValueError("collate: an example has no tokens; drop rejected rows (reject_reason) first")
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for i, (row, length) in enumerate(zip(rows, lengths)):
        for name in columns:
            values = np.asarray(row[name], dtype=np.int64)
            if len(values) != length:
                raise ValueError(f"collate: example {i} has {len(values)} {name} for {length} input_ids")
            out[name][i, :length] = torch.from_numpy(values)
    return out


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(path: str) -> Any:
    """The tokenizer at `path`, loaded once per process (Ray Data calls a batch function
    many times in the same worker)."""
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


@lru_cache(maxsize=8)
def _template(template_json: str) -> OptimizerTemplate:
    return OptimizerTemplate.model_validate_json(template_json)


def tokenize_batch(
    batch: Mapping[str, Sequence[Any]],
    *,
    tokenizer_path: str,
    template_json: str,
    max_length: int,
    prompt_column: str = "prompt",
    context_column: str = "context",
    target_column: str = "optimized_prompt",
    min_prompt_tokens: int = MIN_PROMPT_TOKENS,
    min_target_tokens: int = MIN_TARGET_TOKENS,
) -> dict[str, list[Any]]:
    """A Ray Data `map_batches` step: every input column kept, plus input_ids, labels,
    attention_mask, num_tokens, prompt_truncated, target_truncated and reject_reason.

    One row out per row in: a pair that cannot be used gets empty token lists and a
    non-empty reject_reason, for the caller to route to its rejected output.
    """
    tokenizer = load_tokenizer(tokenizer_path)
    template = _template(template_json)
    prompts = list(batch[prompt_column])
    targets = list(batch[target_column])
    contexts = list(batch[context_column]) if context_column in batch else [""] * len(prompts)
    out: dict[str, list[Any]] = {name: list(values) for name, values in batch.items()}
    fields = ("input_ids", "labels", "attention_mask", "num_tokens", "prompt_truncated",
              "target_truncated", "reject_reason")
    for name in fields:
        out[name] = []
    for prompt, context, target in zip(prompts, contexts, targets):
        result = fit_pair(tokenizer, template, _text(prompt), _text(context), _text(target),
                          max_length=max_length, min_prompt_tokens=min_prompt_tokens,
                          min_target_tokens=min_target_tokens)
        if isinstance(result, str):
            row = {"input_ids": [], "labels": [], "attention_mask": [], "num_tokens": 0,
                   "prompt_truncated": False, "target_truncated": False, "reject_reason": result}
        else:
            row = {**result, "num_tokens": len(result["input_ids"]), "reject_reason": ""}
        for name in fields:
            out[name].append(row[name])
    return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)
