"""The guards every rewrite passes before it replaces a prompt. Pure functions on text.

Three outcomes, each with its reason:
- usable: the optimized prompt (with any copy of the context taken out: the context travels
  beside it, untouched, and generate joins the two again);
- unchanged: the reply is empty or repeats the prompt; the original prompt is kept, so the
  stages downstream still have a prompt to answer;
- rejected: the rewrite alters or drops the context, or fails the paper's length filter.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from bpo_ray.length_filter import LengthFilter
from bpo_ray.optimizer_template import OptimizerTemplate

# A context copied into the rewrite with this share of its word 5-grams, but not verbatim,
# was edited: the rewrite would change the facts the answer must rest on.
ALTERED_OVERLAP = 0.5
# Shorter contexts share too few 5-grams to tell an edited copy from a reworded mention.
MIN_CONTEXT_WORDS = 8
_NGRAM = 5
_WORD = re.compile(r"\w+")
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}


@dataclass(frozen=True)
class Rewrite:
    optimized: str
    """The optimized prompt without its context; the original prompt when unchanged."""
    unchanged: str = ""
    """Why the original prompt is kept ('' for a real rewrite)."""
    rejected: str = ""
    """Why the rewrite is unusable ('' when usable)."""
    distance: float = 0.0
    """How far the rewrite is from the prompt: 0 the same words, 1 none in common."""

    @property
    def usable(self) -> bool:
        return not self.rejected and not self.unchanged


def check_rewrite(reply: str, prompt: str, context: str, *, template: OptimizerTemplate,
                  length_filter: LengthFilter) -> Rewrite:
    """The verdict on one reply of the optimizer for `prompt` (+ `context`)."""
    text = template.parse_output(reply)
    if not text:
        return Rewrite(prompt, unchanged="empty reply")
    if context.strip():
        text, problem = _take_out_context(text, context, expected=template.context_in_output)
        if problem:
            return Rewrite(text, rejected=f"context check: {problem}")
        if not text:
            return Rewrite(prompt, unchanged="reply repeats only the context")
    if _normalized(text) == _normalized(prompt):
        return Rewrite(prompt, unchanged="reply echoes the prompt")
    if problem := length_filter.check(prompt, text):
        return Rewrite(text, rejected=problem)
    return Rewrite(text, distance=word_distance(prompt, text))


def most_different(rewrites: list[Rewrite]) -> Rewrite:
    """Aggressive mode's pick: the usable rewrite farthest from the prompt; without one, an
    unchanged verdict (the prompt stays), else the first rejection."""
    usable = [r for r in rewrites if r.usable]
    if usable:
        return max(usable, key=lambda r: r.distance)
    return next((r for r in rewrites if r.unchanged), rewrites[0])


def word_distance(a: str, b: str) -> float:
    ratio = difflib.SequenceMatcher(None, _words(a), _words(b), autojunk=False).ratio()
    return round(1.0 - ratio, 4)


def _take_out_context(text: str, context: str, *, expected: bool) -> tuple[str, str | None]:
    """(the rewrite without a verbatim copy of the context, a problem or None)."""
    pattern = r"\s+".join(re.escape(word) for word in context.split())
    match = re.search(pattern, text, flags=re.IGNORECASE)
    if match:
        before, after = text[: match.start()], text[match.end():]
        opened, closed = before.rstrip()[-1:], after.lstrip()[:1]
        if opened and _QUOTE_PAIRS.get(opened) == closed:  # a quoted block: the quotes go with it
            before, after = before.rstrip()[:-1], after.lstrip()[1:]
        # A copy that opens or closes the rewrite is the context block: take it out. One inside
        # a sentence is the rewrite naming it ("Is a gecko a reptile?"): leave the words alone.
        if not _tidy(before) or not _tidy(after):
            return _tidy(before + after), None
        return text, None
    if _copied_share(context, text) >= ALTERED_OVERLAP:
        return text, "the rewrite alters the context"
    if expected:
        return text, "the rewrite drops the context"
    return text, None


def _copied_share(context: str, text: str) -> float:
    words = _words(context)
    if len(words) < MIN_CONTEXT_WORDS:
        return 0.0
    grams = set(_ngrams(words))
    return len(grams & set(_ngrams(_words(text)))) / len(grams)


def _tidy(text: str) -> str:
    """What is left beside a removed context: the separator it hung on (a colon) goes too."""
    return text.strip().strip(":").strip()


def _ngrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i: i + _NGRAM]) for i in range(len(words) - _NGRAM + 1)]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _normalized(text: str) -> str:
    return " ".join(_words(text))
