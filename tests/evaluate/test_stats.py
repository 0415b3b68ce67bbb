"""Win / tie / lose statistics of judgments, checked against numbers worked out by hand."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from bpo_ray.evaluate.stats import bootstrap_delta_ci, pair_outcomes, summarize

STATS_KEYS = {"n", "win", "tie", "lose", "unparsed", "inconsistent", "win_rate", "tie_rate", "lose_rate",
              "delta_wr", "delta_wr_ci95", "consistency", "mean_len_original", "mean_len_optimized"}


def judgment(pair_id, order, winner, *, dataset="vicuna_eval", target="t", category="generic",
             original="one two", optimized="one two three four"):
    return {"id": pair_id, "dataset": dataset, "target": target, "category": category, "order": order,
            "winner": winner, "original_response": original, "optimized_response": optimized}


def pair(pair_id, *winners, **kw):
    """Rows of one pair: one winner per order (optimized_first, then original_first)."""
    orders = ("optimized_first", "original_first")
    return [judgment(pair_id, order, w, **kw) for order, w in zip(orders, winners)]


def outcome_of(*winners):
    (result,) = pair_outcomes(pair("p", *winners))
    return result.outcome, result.inconsistent


@pytest.mark.parametrize("winners, expected", [
    (("optimized", "optimized"), ("win", False)),
    (("original", "original"), ("lose", False)),
    (("tie", "tie"), ("tie", False)),
    (("optimized", "original"), ("tie", True)),   # flipped with the order
    (("original", "optimized"), ("tie", True)),
    (("optimized", "tie"), ("tie", True)),
    (("unparsed", "optimized"), ("unparsed", False)),
    (("original", "unparsed"), ("unparsed", False)),
    (("unparsed", "unparsed"), ("unparsed", False)),
    (("optimized",), ("win", False)),             # one order (orders=random)
    (("original",), ("lose", False)),
    (("tie",), ("tie", False)),
    (("unparsed",), ("unparsed", False)),
    ((None,), ("unparsed", False)),
])
def test_pair_outcome(winners, expected):
    assert outcome_of(*winners) == expected


def test_single_order_from_original_first():
    (result,) = pair_outcomes([judgment("p", "original_first", "optimized")])
    assert (result.outcome, result.both_orders_parsed) == ("win", False)


def test_pairs_are_keyed_by_dataset_target_and_id():
    rows = (pair(1, "optimized", "optimized", dataset="a") + pair(1, "original", "original", dataset="b")
            + pair(1, "tie", "tie", dataset="a", target="u"))
    outcomes = {(p.dataset, p.target, p.id): p.outcome for p in pair_outcomes(rows)}
    assert outcomes == {("a", "t", 1): "win", ("b", "t", 1): "lose", ("a", "u", 1): "tie"}


def test_bad_rows_are_named():
    with pytest.raises(ValueError, match="judged twice in order 'optimized_first'"):
        pair_outcomes([judgment(1, "optimized_first", "tie"), judgment(1, "optimized_first", "tie")])
    with pytest.raises(ValueError, match="winner 'A'"):
        pair_outcomes([judgment(1, "optimized_first", "A")])
    with pytest.raises(ValueError, match="order 'first'"):
        pair_outcomes([judgment(1, "first", "tie")])


def ten_pairs_one_order():
    winners = ["optimized"] * 5 + ["tie"] * 2 + ["original"] * 2 + ["unparsed"]
    return [judgment(i, "optimized_first", w) for i, w in enumerate(winners)]


def test_rates_by_hand_one_order():
    s = summarize(ten_pairs_one_order())["overall"]
    assert set(s) == STATS_KEYS
    # 10 pairs, 9 parsed: 5 / 2 / 2.
    assert (s["n"], s["win"], s["tie"], s["lose"], s["unparsed"], s["inconsistent"]) == (10, 5, 2, 2, 1, 0)
    assert s["win_rate"] == 0.5556 and s["tie_rate"] == 0.2222 and s["lose_rate"] == 0.2222
    assert s["delta_wr"] == 0.3333  # (5 - 2) / 9
    assert s["consistency"] is None  # no pair was judged in both orders


def test_rates_by_hand_both_orders():
    rows = []
    spec = ([("optimized", "optimized")] * 4 + [("original", "original")] + [("tie", "tie")] * 2
            + [("optimized", "original"), ("original", "optimized")] + [("optimized", "unparsed")])
    for i, winners in enumerate(spec):
        rows += pair(i, *winners)
    s = summarize(rows)["overall"]
    # 4 wins, 2 agreed ties + 2 flips = 4 ties, 1 loss, 1 unparsed; 9 parsed.
    assert (s["n"], s["win"], s["tie"], s["lose"], s["unparsed"], s["inconsistent"]) == (10, 4, 4, 1, 1, 2)
    assert (s["win_rate"], s["tie_rate"], s["lose_rate"]) == (0.4444, 0.4444, 0.1111)
    assert s["delta_wr"] == 0.3333
    assert s["consistency"] == 0.7778  # 7 of the 9 pairs with both orders parsed agree


def test_no_parsed_pair_gives_none():
    s = summarize([judgment(1, "optimized_first", "unparsed")])["overall"]
    assert (s["n"], s["unparsed"]) == (1, 1)
    assert s["win_rate"] is s["tie_rate"] is s["lose_rate"] is s["delta_wr"] is None
    assert s["delta_wr_ci95"] == [None, None]


def test_length_means_in_words():
    rows = (pair(1, "optimized", "optimized", original="a b", optimized="a b c d e f")
            + pair(2, "tie", "tie", original="a b c d", optimized="a b")
            + [judgment(3, "optimized_first", "unparsed", original="", optimized=None)])
    s = summarize(rows)["overall"]
    assert s["mean_len_original"] == 2.0  # (2 + 4 + 0) / 3
    assert s["mean_len_optimized"] == 2.6667  # (6 + 2 + 0) / 3


def test_groups():
    rows = (pair(1, "optimized", "optimized", dataset="vicuna_eval", target="a", category="math")
            + pair(2, "original", "original", dataset="vicuna_eval", target="b", category="math")
            + pair(3, "tie", "tie", dataset="dolly_eval", target="a", category="open_qa")
            + pair(4, "optimized", "optimized", dataset="dolly_eval", target="a", category="")
            + [judgment(5, "optimized_first", "optimized", dataset="", target="b", category=None)])
    s = summarize(rows)
    assert {k: v["n"] for k, v in s["by_dataset"].items()} == {"": 1, "dolly_eval": 2, "vicuna_eval": 2}
    assert {k: (v["win"], v["tie"], v["lose"]) for k, v in s["by_target"].items()} == {"a": (2, 1, 0), "b": (1, 0, 1)}
    # Categories nest under their test set; pairs without one are left out.
    assert {d: {c: g["n"] for c, g in cats.items()} for d, cats in s["by_category"].items()} == \
        {"dolly_eval": {"open_qa": 1}, "vicuna_eval": {"math": 2}}
    assert s["by_target_dataset"]["a"]["dolly_eval"]["delta_wr"] == 0.5
    assert s["by_target_dataset"]["a"]["vicuna_eval"]["delta_wr"] == 1.0
    # The paper's dWR: mean over test sets, not pooled over pairs ((0.5 + 1.0) / 2, pooled: 2/3).
    assert s["mean_delta_wr_by_target"]["a"]["delta_wr"] == 0.75
    assert s["by_target"]["a"]["delta_wr"] == 0.6667
    for group in [s["overall"], *s["by_dataset"].values(), *s["by_target"].values()]:
        assert set(group) == STATS_KEYS


def test_row_order_and_table_input_do_not_matter():
    rng = random.Random(3)
    rows = []
    for i in range(60):
        rows += pair(i, *rng.choices(["optimized", "original", "tie", "unparsed"], k=2),
                     dataset=rng.choice(["vicuna_eval", "dolly_eval"]))
    shuffled = rows[:]
    rng.shuffle(shuffled)
    assert summarize(shuffled, seed=5) == summarize(rows, seed=5)
    assert summarize(pa.Table.from_pylist(rows), seed=5) == summarize(rows, seed=5)


def wtl_rows(win, tie, lose):
    winners = ["optimized"] * win + ["tie"] * tie + ["original"] * lose
    return [judgment(i, "optimized_first", w) for i, w in enumerate(winners)]


def test_bootstrap_interval():
    small = summarize(wtl_rows(6, 2, 2), seed=0)["overall"]
    low, high = small["delta_wr_ci95"]
    assert low <= small["delta_wr"] == 0.4 <= high
    assert low < high
    # Seeded: same seed, same interval; another seed, another draw.
    assert summarize(wtl_rows(6, 2, 2), seed=0)["overall"]["delta_wr_ci95"] == [low, high]
    assert summarize(wtl_rows(6, 2, 2), seed=1)["overall"]["delta_wr_ci95"] != [low, high]
    # Ten times the pairs, same proportions: same point, an interval about sqrt(10) narrower.
    large = summarize(wtl_rows(60, 20, 20), seed=0)["overall"]
    assert large["delta_wr"] == 0.4
    low10, high10 = large["delta_wr_ci95"]
    assert low10 <= 0.4 <= high10
    assert (high10 - low10) < (high - low) / 2
    # Roughly the normal interval: sd of a +1/0/-1 score here is sqrt(0.8 - 0.16) = 0.8.
    assert high10 - low10 == pytest.approx(2 * 1.96 * 0.8 / 100 ** 0.5, rel=0.15)


def test_bootstrap_all_wins_and_strata():
    assert bootstrap_delta_ci([(5, 0, 0)]) == [1.0, 1.0]
    assert bootstrap_delta_ci([]) == [None, None]
    # Two strata: the interval is around the mean of the two sets' dWR (0.6 and -0.2).
    low, high = bootstrap_delta_ci([(80, 0, 20), (40, 0, 60)], seed=0)
    assert low < 0.2 < high and high - low < 0.3
