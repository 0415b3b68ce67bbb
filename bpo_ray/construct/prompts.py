"""The construction prompt: feedback pair in, comparison + optimized instruction out.

Content follows the BPO paper (compare on correctness first, then helpfulness and
harmlessness; rewrite as a prompt engineer without leaking the good answer), worded for this
project. `prompt_settings()` (every text and sampling override below) is hashed into each
row's resume key: edit a prompt and the rows built with the old one are rebuilt, no version
number to bump by hand.
"""

from __future__ import annotations

from bpo_ray.models.base import ChatRequest

TAG = "Optimized Instruction:"

_INTRO = (
    "You are reviewing feedback on an AI assistant. A user gave the assistant an instruction, "
    "and people compared two of its responses: they preferred one and rejected the other."
)

_TASK = """\
Step 1. Compare the two responses. Judge correctness first, then helpfulness and \
harmlessness, and say briefly why the preferred response is better.

Step 2. Act as a prompt engineer. Rewrite the instruction so that an assistant following it \
would write a response like the preferred one and unlike the rejected one. The rewrite must:
- keep every piece of information and the intent of the original instruction;
- add no facts or details taken from the preferred response;
- not answer the instruction itself;
{context_rule}
Reply in exactly this format and nothing else:
Comparison: <your comparison>
{tag} <the rewritten instruction>"""

_CONTEXT_RULE = (
    "- leave the context untouched: do not repeat, summarize or change it; the assistant "
    "will receive it as it is, after your instruction.\n"
)

REPAIR = """\
Rewrite the instruction below so that an assistant would give a more helpful, more accurate \
and safer answer to it. Keep all of its information and intent, do not answer it, and reply \
with only the rewritten instruction, on one line after "{tag}".{context_note}

Instruction: {instruction}"""

_REPAIR_CONTEXT_NOTE = " The instruction comes with a context that stays as it is; do not repeat it."
REPAIR_SAMPLING = {"max_tokens": 128, "stop": ["\n\n"]}


def construction_messages(instruction: str, context: str, good: str, bad: str, *, has_context: bool) -> list[dict[str, str]]:
    parts = [_INTRO, "", "[Instruction]", instruction]
    if has_context:
        parts += ["", "[Context]", context]
    parts += ["", "[Preferred response]", good, "", "[Rejected response]", bad, ""]
    parts.append(_TASK.format(context_rule=_CONTEXT_RULE if has_context else "", tag=TAG))
    return [{"role": "user", "content": "\n".join(parts)}]


def construction_request(row: dict) -> ChatRequest:
    return ChatRequest(
        construction_messages(
            row["instruction"], row["context"], row["good_res"], row["bad_res"],
            has_context=row["has_context"],
        )
    )


def repair_request(row: dict, *, prefill: bool) -> ChatRequest:
    """The one follow-up a reply without the tag gets: a short request for the rewrite alone.

    Self-contained on purpose: the long feedback conversation is what the model just failed to
    follow, and small models asked to continue it copy the responses instead (measured with the
    embedded model). Pre-filling the tag, where the endpoint can continue an assistant turn,
    makes them answer in the expected shape far more often.
    """
    note = _REPAIR_CONTEXT_NOTE if row["has_context"] else ""
    content = REPAIR.format(tag=TAG, context_note=note, instruction=row["instruction"])
    return ChatRequest([{"role": "user", "content": content}], prefill=TAG if prefill else None,
                       sampling=dict(REPAIR_SAMPLING))


def prompt_settings() -> dict:
    """Everything in this module that shapes a reply, for the resume key."""
    return {"intro": _INTRO, "task": _TASK, "context_rule": _CONTEXT_RULE, "repair": REPAIR,
            "repair_context_note": _REPAIR_CONTEXT_NOTE, "repair_sampling": REPAIR_SAMPLING, "tag": TAG}
