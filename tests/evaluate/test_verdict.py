"""Verdict parsing on the replies judges really give: pure functions, no model."""

from __future__ import annotations

import math

import pytest

from bpo_ray.errors import ConfigError
from bpo_ray.evaluate.judge_prompts import (
    PAIRWISE,
    RANKING,
    JudgePrompt,
    load_judge_prompt,
)
from bpo_ray.evaluate.stage import winner_of
from bpo_ray.evaluate.verdict import parse_pairwise, parse_ranking, verdict_probs
from bpo_ray.models.base import TokenLogprob


@pytest.mark.parametrize("reply, verdict", [
    ("Answer A is more detailed.\n[[A]]", "A"),
    ("Both are fine.\n[[C]]", "C"),
    ("final verdict: [[b]]", "B"),  # lower case
    ("[[ A ]]", "A"),
    # Both tags, far apart: the last one is the verdict.
    ("At first glance [[A]] seems right, but on reflection B is accurate.\nFinal verdict: [[B]]", "B"),
    # A tag inside quoted text is not the verdict.
    ('The instructions say to output "[[A]]" if A is better. B is better.\n[[B]]', "B"),
    ('I would not say "[[B]]" here.', None),
    # The options listed, then no decision: no verdict.
    ("I must reply [[A]], [[B]] or [[C]].", None),
    ("I must reply [[A]], [[B]] or [[C]]. After comparing: [[A]]", "A"),
    ("Answer B is better.", None),
    ("", None),
    ("[A] is better", None),
])
def test_pairwise_verdicts(reply, verdict):
    assert parse_pairwise(reply) == verdict


@pytest.mark.parametrize("reply, verdict", [
    ('[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]', "A"),
    ('Here is my ranking:\n[{"model": "model_2", "rank": 1}, {"model": "model_1", "rank": 2}]\nModel 2 is clearer.', "B"),
    ("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 1}]", "C"),  # Python quotes, a tie
    ('Considering [the context] first: [{"model": "model_1", "rank": 2}, {"model": "model_2", "rank": 1}]', "B"),
    ('[{"model": "model_1", "rank": "first"}, {"model": "model_2", "rank": 2}]', None),
    ('[{"model": "model_1", "rank": 1}]', None),
    ("__import__('os').system('echo pwned')", None),  # read as JSON, never evaluated
    ("model_1 is better", None),
])
def test_ranking_verdicts(reply, verdict):
    assert parse_ranking(reply) == verdict


def test_winner_follows_the_order():
    assert winner_of("A", "optimized_first") == "optimized"
    assert winner_of("A", "original_first") == "original"
    assert winner_of("B", "original_first") == "optimized"
    assert winner_of("C", "original_first") == "tie"
    assert winner_of(None, "optimized_first") == "unparsed"


def test_logprob_verdict_reads_the_label_position():
    tokens = [TokenLogprob("[[", -0.01, [("[[", -0.01)]),
              TokenLogprob("B", math.log(0.6), [("B", math.log(0.6)), ("A", math.log(0.3)), (" C", math.log(0.05)),
                                                 ("The", math.log(0.05))]),
              TokenLogprob("]]", -0.01, [])]
    probs = verdict_probs(tokens)
    assert probs is not None
    assert probs["B"] == pytest.approx(0.6 / 0.95) and probs["A"] == pytest.approx(0.3 / 0.95)
    assert probs["C"] == pytest.approx(0.05 / 0.95)
    assert verdict_probs([TokenLogprob("Sure", -0.1, [])]) is None


def test_prompts_fill_placeholders_literally(tmp_path):
    messages = PAIRWISE.messages("Q {answer_b}?", "ans {x}", "other")
    user = messages[-1]["content"]
    assert "Q {answer_b}?" in user and "ans {x}" in user and "[Answer B]\nother" in user
    assert RANKING.kind == "ranking" and "model_1" in RANKING.user
    custom = tmp_path / "judge.yaml"
    custom.write_text("name: mine\nversion: '3'\nkind: pairwise\nuser: '{question} | {answer_a} | {answer_b}'\n"
                      "repair: 'verdict please'\n")
    prompt = load_judge_prompt(str(custom))
    assert prompt.messages("q", "a", "b") == [{"role": "user", "content": "q | a | b"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: '1'\nkind: pairwise\nuser: '{question}'\nrepair: x\n")
    with pytest.raises(ConfigError, match="answer_a"):
        load_judge_prompt(str(bad))
    with pytest.raises(ConfigError, match="neither a preset"):
        load_judge_prompt("no-such-prompt")
    assert isinstance(load_judge_prompt("pairwise"), JudgePrompt)
