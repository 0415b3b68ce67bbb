"""Reading a judge's verdict. Pure functions; a reply is only searched, never evaluated.

A verdict is "A", "B", "C" (tie) or None (no verdict: the row is recorded as unparsed, never
counted as a win or a loss).
"""

from __future__ import annotations

import json
import math
import re

from bpo_ray.models.base import TokenLogprob

Verdict = str | None
LABELS = ("A", "B", "C")

_TAG = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)
_QUOTES = "\"'`“”‘’«»"
# A tag this close to a different tag is part of a list of the options ("reply [[A]], [[B]]
# or [[C]]"), not a verdict.
_LISTING_CHARS = 16


def parse_pairwise(text: str) -> Verdict:
    """The last [[A]] / [[B]] / [[C]] of the reply that is neither quoted nor part of a list
    of the options; case-insensitive."""
    text = text or ""
    tags = [m for m in _TAG.finditer(text) if not _quoted(text, m.start(), m.end())]
    verdicts = [m for i, m in enumerate(tags) if not _listed(tags, i)]
    return verdicts[-1].group(1).upper() if verdicts else None


def _quoted(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    return before in _QUOTES and after in _QUOTES and before != ""


def _listed(tags: list[re.Match], i: int) -> bool:
    me = tags[i]
    for j in (i - 1, i + 1):
        if 0 <= j < len(tags) and tags[j].group(1).upper() != me.group(1).upper():
            gap = me.start() - tags[j].end() if j < i else tags[j].start() - me.end()
            if gap <= _LISTING_CHARS:
                return True
    return False


_MODEL = re.compile(r"model[_\s-]?([12])", re.IGNORECASE)


def parse_ranking(text: str) -> Verdict:
    """The paper's ranking reply ([{"model": "model_1", "rank": 1}, ...]) read as JSON: A when
    model_1 ranks better, B when model_2 does, C for equal ranks. Prose around the list and
    Python-style single quotes are tolerated; anything else is no verdict."""
    for candidate in _json_lists(text or ""):
        ranks = _ranks(candidate)
        if ranks is not None:
            one, two = ranks
            return "C" if one == two else "A" if one < two else "B"
    return None


def _json_lists(text: str):
    """Every bracketed span that could be the ranking list, last first (a model that thinks
    aloud usually ends with its answer)."""
    starts = [i for i, ch in enumerate(text) if ch == "["]
    for start in reversed(starts):
        end = text.find("]", start)
        while end != -1:
            span = text[start:end + 1]
            yield span
            yield span.replace("'", '"')
            end = text.find("]", end + 1)


def _ranks(span: str) -> tuple[float, float] | None:
    try:
        items = json.loads(span)
    except ValueError:
        return None
    if not isinstance(items, list):
        return None
    ranks: dict[str, float] = {}
    for item in items:
        if not isinstance(item, dict):
            return None
        match = _MODEL.fullmatch(str(item.get("model", "")).strip())
        rank = item.get("rank")
        if match is None or isinstance(rank, bool) or not isinstance(rank, (int, float)):
            return None
        ranks[match.group(1)] = float(rank)
    if set(ranks) != {"1", "2"}:
        return None
    return ranks["1"], ranks["2"]


def parse_verdict(kind: str, text: str) -> Verdict:
    return parse_ranking(text) if kind == "ranking" else parse_pairwise(text)


def verdict_probs(tokens: list[TokenLogprob]) -> dict[str, float] | None:
    """P(A), P(B), P(C) at the first verdict token of a verdict-only reply ("[[A]]"), from the
    token's top alternatives, renormalised over the three labels. None when the reply has no
    verdict token or the alternatives name no label."""
    for token in tokens:
        if _label(token.token) is None:
            continue
        mass = dict.fromkeys(LABELS, 0.0)
        for alternative, logprob in [(token.token, token.logprob), *token.top]:
            label = _label(alternative)
            if label is not None and logprob is not None:
                # A label may appear as several tokens ("A", " A", "[[A"): add them once each.
                mass[label] += math.exp(logprob)
        seen = {alt for alt, _ in token.top}
        if token.token in seen:  # the chosen token is also listed among the alternatives
            mass[_label(token.token)] -= math.exp(token.logprob)
        total = sum(mass.values())
        return {k: v / total for k, v in mass.items()} if total > 0 else None
    return None


def _label(token: str) -> str | None:
    """The label a token stands for ("A", " b", "[[C"), or None."""
    core = token.strip().lstrip("[").rstrip("]").strip()
    return core.upper() if core.upper() in LABELS and len(core) == 1 else None


def best(probs: dict[str, float]) -> str:
    return max(LABELS, key=lambda k: probs[k])
