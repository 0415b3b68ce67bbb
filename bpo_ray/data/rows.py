"""What every row of every job carries, and how rejections are labelled and counted.

A row is `status` 'ok' or 'rejected'; a rejected row keeps its input and says why in `reason`.
Readers, stages, the runner and the train job all use these, so a reason is counted the same
way everywhere.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"


def reason_label(reason: str) -> str:
    """The kind of a rejection, for counting: its text before details ('length filter: 3.1 > 2'
    -> 'length filter'; 'missing field x (looked for a, b)' -> 'missing field x')."""
    return reason.split(":")[0].split(" (")[0].split(";")[0].strip()


def count_reasons(reasons: Iterable[str]) -> dict[str, int]:
    """{label: count}, most frequent first."""
    return dict(Counter(reason_label(r) for r in reasons).most_common())


def first_field(record: dict, names: list[str]) -> tuple[str, Any] | None:
    """(name, value) of the first of `names` the record has: how every reader finds a field
    that goes by several names in different datasets."""
    for name in names:
        if name in record:
            return name, record[name]
    return None
