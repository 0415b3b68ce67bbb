"""Win / tie / lose statistics of the evaluate stage. Pure functions over judgment rows.

A judgment row is one judge call on one pair of answers (the target model's answer to the
original prompt and to the optimized prompt) in one order. The columns read here:

- `id`, `dataset`, `target`: a pair is the rows sharing (dataset, target, id);
- `category` (optional): the test set's own category of the prompt;
- `order`: "optimized_first" or "original_first";
- `winner`: "optimized", "original", "tie" or "unparsed" (None counts as "unparsed");
- `original_response`, `optimized_response`: the two answers (for the length means).

A pair judged in both orders counts once. Its outcome, from the optimized answer's side:
an unparsed order makes the pair "unparsed" (reported, never a win or a loss); two parsed
orders that agree give their result; two that disagree give a tie, flagged inconsistent (the
judge's verdict followed the position, not the answers). One order gives its result.
Rates are over the parsed pairs (win + tie + lose), and the confidence interval of
dWR = win rate - lose rate is a seeded percentile bootstrap over those pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ORDERS = ("optimized_first", "original_first")
WINNERS = ("optimized", "original", "tie", "unparsed")
OUTCOMES = ("win", "tie", "lose", "unparsed")
_OUTCOME_OF_WINNER = {"optimized": "win", "original": "lose", "tie": "tie", "unparsed": "unparsed"}
DIGITS = 4
CI_LEVEL = 0.95


@dataclass(frozen=True)
class PairOutcome:
    """One pair's result after combining its orders."""

    dataset: str
    target: str
    id: Any
    category: str
    outcome: str  # win | tie | lose | unparsed (from the optimized answer's side)
    inconsistent: bool  # both orders parsed and they disagree (outcome is then "tie")
    both_orders_parsed: bool  # judged in both orders, both parsed: counts for consistency
    words_original: int
    words_optimized: int


def judgment_rows(rows: Any) -> list[dict]:
    """Rows as dicts, from a list of dicts or anything with `to_pylist` (a pyarrow Table)."""
    if hasattr(rows, "to_pylist"):
        return rows.to_pylist()
    return [dict(r) for r in rows]


def word_count(text: str | None) -> int:
    return len((text or "").split())


def pair_outcomes(rows: Any) -> list[PairOutcome]:
    """One outcome per pair, sorted by (dataset, target, id) so that the bootstrap does not
    depend on the order the rows arrived in."""
    pairs: dict[tuple, list[dict]] = defaultdict(list)
    for index, row in enumerate(judgment_rows(rows)):
        _check_row(row, index)
        pairs[(row.get("dataset") or "", row.get("target") or "", row["id"])].append(row)
    outcomes = [_combine(key, group) for key, group in pairs.items()]
    return sorted(outcomes, key=lambda p: (p.dataset, p.target, str(p.id)))


def _check_row(row: Mapping, index: int) -> None:
    for column in ("id", "order", "winner"):
        if column not in row:
            raise ValueError(f"judgment row {index}: no {column!r} column")
    if row["order"] not in ORDERS:
        raise ValueError(f"judgment row {index} (id {row['id']!r}): order {row['order']!r} is not one of {ORDERS}")
    if row["winner"] is not None and row["winner"] not in WINNERS:
        raise ValueError(f"judgment row {index} (id {row['id']!r}): winner {row['winner']!r} is not one of {WINNERS}")


def _combine(key: tuple, group: list[dict]) -> PairOutcome:
    dataset, target, pair_id = key
    by_order: dict[str, str] = {}
    for row in group:
        if row["order"] in by_order:
            raise ValueError(f"pair (dataset {dataset!r}, target {target!r}, id {pair_id!r}) "
                             f"is judged twice in order {row['order']!r}")
        by_order[row["order"]] = _OUTCOME_OF_WINNER[row["winner"] or "unparsed"]
    results = list(by_order.values())
    inconsistent = False
    if "unparsed" in results:
        outcome = "unparsed"
    elif len(results) == 2 and results[0] != results[1]:
        outcome, inconsistent = "tie", True
    else:
        outcome = results[0]
    first = group[0]
    category = next((r.get("category") for r in group if r.get("category")), "") or ""
    return PairOutcome(
        dataset=dataset, target=target, id=pair_id, category=str(category), outcome=outcome,
        inconsistent=inconsistent,
        both_orders_parsed=len(results) == 2 and "unparsed" not in results,
        words_original=word_count(first.get("original_response")),
        words_optimized=word_count(first.get("optimized_response")),
    )


def group_stats(pairs: list[PairOutcome], seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """The statistics of one group of pairs (see the module docstring)."""
    counts = {name: sum(p.outcome == name for p in pairs) for name in OUTCOMES}
    parsed = counts["win"] + counts["tie"] + counts["lose"]
    judged_twice = [p for p in pairs if p.both_orders_parsed]
    inconsistent = sum(p.inconsistent for p in pairs)

    def rate(count: int) -> float | None:
        return _round(count / parsed) if parsed else None

    delta = (counts["win"] - counts["lose"]) / parsed if parsed else None
    return {
        "n": len(pairs),
        **counts,
        "inconsistent": inconsistent,
        "win_rate": rate(counts["win"]),
        "tie_rate": rate(counts["tie"]),
        "lose_rate": rate(counts["lose"]),
        "delta_wr": _round(delta),
        "delta_wr_ci95": [_round(v) for v in bootstrap_delta_ci(
            [(counts["win"], counts["tie"], counts["lose"])], seed=seed, resamples=resamples)],
        "consistency": _round(1 - inconsistent / len(judged_twice)) if judged_twice else None,
        "mean_len_original": _round(float(np.mean([p.words_original for p in pairs]))) if pairs else None,
        "mean_len_optimized": _round(float(np.mean([p.words_optimized for p in pairs]))) if pairs else None,
    }


def bootstrap_delta_ci(strata: list[tuple[int, int, int]], seed: int = 0,
                       resamples: int = 2000) -> list[float | None]:
    """Percentile bootstrap 95% interval of dWR, the mean over strata of (wins - losses) /
    parsed pairs, each stratum's parsed pairs resampled with replacement (scores +1 / 0 / -1).

    One stratum is the plain bootstrap of a group's dWR; several (one per test set) give the
    interval of the paper's dWR, the mean over the test sets. Resampling n pairs of three kinds
    with replacement is drawing the three counts from a multinomial, which is what this does
    (exact, and as fast for 10^5 pairs as for 10)."""
    strata = [s for s in strata if sum(s) > 0]
    if not strata:
        return [None, None]
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for win, tie, lose in strata:
        n = win + tie + lose
        drawn = rng.multinomial(n, [win / n, tie / n, lose / n], size=resamples)
        total += (drawn[:, 0] - drawn[:, 2]) / n
    means = total / len(strata)
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]


def mean_delta_wr(groups: Mapping[str, Mapping[str, Any]], seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """The paper's dWR: the mean over test sets of each set's win rate - lose rate, with a
    bootstrap interval that resamples within each set. Sets with no parsed pair are left out."""
    used = {name: g for name, g in groups.items() if g["win"] + g["tie"] + g["lose"] > 0}
    if not used:
        return {"delta_wr": None, "delta_wr_ci95": [None, None], "datasets": []}
    point = float(np.mean([(g["win"] - g["lose"]) / (g["win"] + g["tie"] + g["lose"]) for g in used.values()]))
    ci = bootstrap_delta_ci([(g["win"], g["tie"], g["lose"]) for g in used.values()], seed=seed, resamples=resamples)
    return {"delta_wr": _round(point), "delta_wr_ci95": [_round(v) for v in ci], "datasets": sorted(used)}


def summarize(rows: Any, seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """Statistics of an evaluate run's judgments.

    Keys: `overall`; `by_dataset`, `by_target` (name -> stats); `by_category` (dataset ->
    category -> stats; pairs without a category are left out of it); `by_target_dataset`
    (target -> dataset -> stats: the cells of the paper's table); `mean_delta_wr_by_target`
    (target -> the paper's dWR, the mean over that target's test sets, with its interval).
    Every interval uses the same seed, so a group's figures do not depend on the others."""
    pairs = pair_outcomes(rows)

    def stats(group: list[PairOutcome]) -> dict[str, Any]:
        return group_stats(group, seed=seed, resamples=resamples)

    def grouped(key) -> dict[str, list[PairOutcome]]:
        groups: dict[str, list[PairOutcome]] = defaultdict(list)
        for pair in pairs:
            groups[key(pair)].append(pair)
        return dict(sorted(groups.items()))

    def nested(outer, inner, keep=lambda name: True) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, list[PairOutcome]]] = defaultdict(lambda: defaultdict(list))
        for pair in pairs:
            if keep(inner(pair)):
                table[outer(pair)][inner(pair)].append(pair)
        return {o: {i: stats(g) for i, g in sorted(cells.items())} for o, cells in sorted(table.items())}

    by_category = nested(lambda p: p.dataset, lambda p: p.category, keep=bool)
    by_target_dataset = nested(lambda p: p.target, lambda p: p.dataset)
    return {
        "overall": stats(pairs),
        "by_dataset": {name: stats(g) for name, g in grouped(lambda p: p.dataset).items()},
        "by_target": {name: stats(g) for name, g in grouped(lambda p: p.target).items()},
        "by_category": by_category,
        "by_target_dataset": by_target_dataset,
        "mean_delta_wr_by_target": {
            target: mean_delta_wr(cells, seed=seed, resamples=resamples)
            for target, cells in by_target_dataset.items()
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)
