"""Parse a construction reply and apply the paper's filters. Pure functions, no model text is
ever evaluated: we only search it for the tag."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

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


class LengthFilter(BaseModel):
    """The paper's filter: an optimized prompt much shorter or much longer than the original
    usually lost information or leaked the answer (lengths in characters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_shrink: float = Field(2.0, gt=0, description="Reject when original/optimized length exceeds this.")
    max_growth: float = Field(6.0, gt=0, description="Reject when optimized/original length exceeds this.")

    def check(self, original: str, optimized: str) -> str | None:
        a, b = len(original.strip()), len(optimized.strip())
        if b == 0:
            return "optimized prompt is empty"
        if a / b > self.max_shrink:
            return f"length filter: original/optimized = {a / b:.2f} > {self.max_shrink:g}"
        if a and b / a > self.max_growth:
            return f"length filter: optimized/original = {b / a:.2f} > {self.max_growth:g}"
        return None
