"""The guards on every rewrite: empty replies and echoes keep the prompt, a copied context is
taken out (or the rewrite rejected when it alters or drops it), the paper's length filter, and
aggressive mode's pick among several rewrites."""

from __future__ import annotations

import pytest

from bpo_ray.length_filter import LengthFilter
from bpo_ray.optimize.guards import (
    Rewrite,
    check_rewrite,
    most_different,
    word_distance,
)
from bpo_ray.optimizer_template import PRESETS

DEFAULT = PRESETS["bpo-ray"]
LLAMA2 = PRESETS["bpo-llama2"]
FILTER = LengthFilter()

PROMPT = "Tell me about owls."
SUMMARIZE = "Summarize the paragraph."
CONTEXT = ("The town council voted to plant two hundred trees along the main road next spring, "
           "paid for by a local fund.")


def check(reply, prompt=PROMPT, context="", *, template=DEFAULT, length_filter=FILTER):
    return check_rewrite(reply, prompt, context, template=template, length_filter=length_filter)


# --- replies that keep the prompt ----------------------------------------------------------


@pytest.mark.parametrize("reply", ["", "   \n", '""', "\u201c \u201d"])
def test_empty_reply_keeps_the_prompt(reply):
    assert check(reply) == Rewrite(PROMPT, unchanged="empty reply")
    assert not check(reply).usable


@pytest.mark.parametrize("reply", [
    "Tell me about owls.",
    "tell me about OWLS",
    '"Tell me about owls!"',
    "\u201cTell me -- about owls?\u201d",
    "  TELL me, about owls...  ",
])
def test_an_echo_keeps_the_prompt(reply):
    rewrite = check(reply)
    assert rewrite == Rewrite(PROMPT, unchanged="reply echoes the prompt")
    assert not rewrite.usable and rewrite.distance == 0.0


def test_a_reply_of_only_the_context_keeps_the_prompt():
    for reply in (CONTEXT, f'"{CONTEXT}"', CONTEXT.upper()):
        assert check(reply, SUMMARIZE, CONTEXT) == Rewrite(SUMMARIZE, unchanged="reply repeats only the context")


# --- a real rewrite ------------------------------------------------------------------------


def test_a_real_rewrite_is_usable():
    reply = "Describe the main species of owls, where they live and how they hunt at night."
    rewrite = check(f'  "{reply}"\n')
    assert rewrite.usable and (rewrite.unchanged, rewrite.rejected) == ("", "")
    assert rewrite.optimized == reply
    assert 0 < rewrite.distance <= 1
    assert rewrite.distance == word_distance(PROMPT, reply)


def test_a_small_change_is_a_small_distance():
    small = check("Tell me all about barn owls.")
    big = check("Describe the main species of owls, where they live and how they hunt at night.")
    assert small.usable and big.usable
    assert 0 < small.distance < big.distance


def test_word_distance():
    assert word_distance("Tell me about owls", "tell me, about OWLS!") == 0.0
    assert word_distance("Tell me about owls", "Explain gecko diets") == 1.0
    assert 0 < word_distance("Tell me about owls", "Tell me about barn owls") < 0.5


# --- the context ---------------------------------------------------------------------------


@pytest.mark.parametrize("reply, optimized", [
    (f"Summarize the following paragraph in one clear sentence:\n\n{CONTEXT}",
     "Summarize the following paragraph in one clear sentence"),
    (f"{CONTEXT}\n\nSummarize this paragraph in one sentence for a newsletter.",
     "Summarize this paragraph in one sentence for a newsletter."),
    # Whitespace and case inside the copy do not matter.
    ("Summarize the paragraph below in one sentence.\n" + CONTEXT.replace(" two ", "\n two ").lower(),
     "Summarize the paragraph below in one sentence."),
    # The whole reply quoted: parse_output takes the quotes off first.
    (f'"Summarize the following paragraph in one sentence.\n{CONTEXT}"',
     "Summarize the following paragraph in one sentence."),
])
def test_a_copied_context_is_taken_out(reply, optimized):
    rewrite = check(reply, SUMMARIZE, CONTEXT)
    assert rewrite.usable, rewrite
    assert rewrite.optimized == optimized
    assert CONTEXT.split()[3] not in rewrite.optimized  # "voted"


@pytest.mark.parametrize("reply, optimized", [
    (f'Summarize this paragraph in one sentence: "{CONTEXT}"', "Summarize this paragraph in one sentence"),
    (f'Summarize this paragraph in one sentence:\n\u201c{CONTEXT}\u201d', "Summarize this paragraph in one sentence"),
    (f'"{CONTEXT}"\nSummarize the quoted paragraph in one sentence for a newsletter.',
     "Summarize the quoted paragraph in one sentence for a newsletter."),
])
@pytest.mark.parametrize("template", [DEFAULT, LLAMA2], ids=["bpo-ray", "bpo-llama2"])
def test_a_quoted_context_block_is_taken_out(reply, optimized, template):
    # The quotes the context sat in go with it (guards._tidy); generate joins the context again.
    rewrite = check(reply, SUMMARIZE, CONTEXT, template=template)
    assert rewrite.usable and rewrite.optimized == optimized


def test_a_context_named_inside_a_sentence_is_left_alone():
    prompt = "Classify the animal as a mammal, bird or reptile."
    reply = "Is a gecko a mammal, a bird or a reptile? Answer with one word, then explain why."
    rewrite = check(reply, prompt, "Gecko")
    assert rewrite.usable and rewrite.optimized == reply
    # At the end of the rewrite, the same short context is the context block.
    rewrite = check("Classify this animal as a mammal, a bird or a reptile and say why: Gecko", prompt, "Gecko")
    assert rewrite.usable and rewrite.optimized == "Classify this animal as a mammal, a bird or a reptile and say why"


def test_a_rewrite_without_the_context_is_fine_by_default():
    reply = "Summarize the paragraph in one clear sentence."
    assert check(reply, SUMMARIZE, CONTEXT) == Rewrite(reply, distance=word_distance(SUMMARIZE, reply))
    assert check(reply, SUMMARIZE, "   ").usable  # a blank context is no context


def test_an_edited_copy_of_the_context_is_rejected():
    edited = CONTEXT.replace("next spring", "next summer")
    reply = f"Summarize the following paragraph in one clear sentence:\n\n{edited}"
    rewrite = check(reply, SUMMARIZE, CONTEXT)
    assert rewrite == Rewrite(reply, rejected="context check: the rewrite alters the context")
    assert not rewrite.usable
    # The same check with the released model's preset.
    assert check(reply, SUMMARIZE, CONTEXT, template=LLAMA2).rejected == \
        "context check: the rewrite alters the context"


def test_a_reworded_mention_of_the_context_is_not_an_edit():
    # Under half of the context's 5-grams: the rewrite talks about the text, it does not copy it.
    reply = "Summarize in one sentence the council's vote to plant two hundred trees along the main road."
    rewrite = check(reply, SUMMARIZE, CONTEXT)
    assert rewrite.usable and rewrite.optimized == reply


def test_a_short_context_is_never_an_edited_copy():
    context = "The cat sat on the warm mat."  # 7 words: too few 5-grams to judge
    reply = "Rewrite this sentence more vividly: The cat sat on the warm mat today."
    rewrite = check(reply, "Make this sentence vivid.", context)
    assert rewrite.usable and rewrite.optimized == reply


def test_bpo_llama2_expects_the_context_in_the_rewrite():
    without = "Summarize the paragraph in one clear sentence."
    assert check(without, SUMMARIZE, CONTEXT, template=LLAMA2) == \
        Rewrite(without, rejected="context check: the rewrite drops the context")
    # The released model copies the context after a single newline: taken out.
    rewrite = check(f"{without}\n{CONTEXT}", SUMMARIZE, CONTEXT, template=LLAMA2)
    assert rewrite.usable and rewrite.optimized == without
    # Without a context there is nothing to drop.
    assert check("Describe the main species of owls and their habitats.", template=LLAMA2).usable


# --- the length filter ---------------------------------------------------------------------


def test_the_length_filter_rejects_both_ways():
    long_prompt = "Explain in detail how barn owls hunt at night, what they eat and where they nest."
    assert len(long_prompt) == 81
    shrunk = check("Owls hunting?", long_prompt)
    assert shrunk.rejected == "length filter: original/optimized = 6.23 > 2"
    assert shrunk.optimized == "Owls hunting?" and not shrunk.usable
    grown = "Write a long essay about owls: " + "their species, habitats, diets and calls; " * 3
    rewrite = check(grown, "Owls?")
    assert rewrite.rejected == f"length filter: optimized/original = {len(grown.strip()) / 5:.2f} > 6"
    # Tighter settings reject what the defaults let through.
    reply = "Tell me about barn owls and where they nest in winter."
    assert check(reply).usable
    assert check(reply, length_filter=LengthFilter(max_growth=2)).rejected.startswith(
        "length filter: optimized/original = ")


def test_the_length_filter_measures_the_rewrite_without_its_context():
    # With the context counted the rewrite would be 6x the prompt; without it, it is fine.
    reply = f"Summarize the paragraph below in one sentence.\n\n{CONTEXT}"
    rewrite = check(reply, SUMMARIZE, CONTEXT)
    assert rewrite.usable and rewrite.optimized == "Summarize the paragraph below in one sentence."
    # And a rewrite whose instruction shrank too much is rejected even though the context is long.
    rewrite = check(f"Summarize.\n\n{CONTEXT}", "Summarize the paragraph in exactly one sentence.", CONTEXT)
    assert rewrite.rejected.startswith("length filter: original/optimized") and rewrite.optimized == "Summarize."


# --- aggressive mode's pick ----------------------------------------------------------------


def test_most_different_picks_the_farthest_usable_rewrite():
    near = check("Tell me all about barn owls.")
    far = check("Describe the main species of owls, where they live and how they hunt at night.")
    echo, empty = check("tell me about owls"), check("")
    rejected = check("Owls " * 40)
    assert near.usable and far.usable and rejected.rejected
    assert most_different([near, echo, far, rejected, empty]) is far
    assert most_different([rejected, near]) is near


def test_most_different_falls_back_to_unchanged_then_to_the_first_rejection():
    echo, empty = check("tell me about owls"), check("")
    first = check("Owls " * 40)
    second = check("Owls!", "Tell me everything about owls, their calls and their habitats.")
    assert first.rejected and second.rejected and first != second
    assert most_different([first, echo, empty]) is echo
    assert most_different([first, empty]) is empty
    assert most_different([first, second]) is first
    assert most_different([second, first]) is second
    assert most_different([first]).optimized != PROMPT  # a rejection keeps the rewrite's text
