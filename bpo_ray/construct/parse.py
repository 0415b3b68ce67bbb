"""Parse a construction reply. Pure functions, no model text is ever evaluated: we only search
it for the tag."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bpo_ray.construct.prompts import TAG

# Tolerates markdown decoration (**Optimized Instruction:**, ### Optimized instruction) and a
# full-width colon, which models emit as often as the plain form.
_TAG_RE = re.compile(r"[#*_\s]*optimi[sz]ed\s+(?:instruction|prompt)[*_\s]*[:：][*_]*", re.IGNORECASE)
_COMPARISON_RE = re.compile(r"^[#*_\s]*comparison[*_\s]*[:：][*_]*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’"


@dataclass(frozen=True)
class Parsed:
    comparison: str
    optimized: str


def parse_reply(text: str) -> Parsed | None:
    """The optimized instruction after the tag and the comparison before it; None without tag
    or with nothing after it."""
    match = _TAG_RE.search(text or "")
    if not match:
        return None
    optimized = _clean(text[match.end():])
    if not optimized:
        return None
    comparison = _COMPARISON_RE.sub("", text[: match.start()].strip()).strip()
    return Parsed(comparison=comparison, optimized=optimized)


def parse_continuation(prefill: str | None, continuation: str) -> Parsed | None:
    """A reply to a pre-filled turn lacks the prefill; put it back before parsing."""
    return parse_reply((prefill or "") + continuation)


def _clean(text: str) -> str:
    text = text.strip()
    # The instruction is one paragraph: what follows a blank line is the model rambling on
    # (small models start answering it).
    text = text.split("\n\n", 1)[0]
    # A model sometimes adds a second section after the instruction; keep only ours.
    for marker in ("\nComparison:", "\n" + TAG):
        cut = text.find(marker)
        if cut > 0:
            text = text[:cut]
    text = text.strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text
