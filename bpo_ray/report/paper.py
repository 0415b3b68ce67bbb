"""The paper's headline results, as data.

Cheng et al., "Black-Box Prompt Optimization: Aligning Large Language Models without Model
Training", ACL 2024, main results table: GPT-4 as the judge, win / tie / lose in percent of
"model + BPO" against the same model answering the original prompt, on four test sets; dWR is
the mean over the four sets of (win - lose).
"""

from __future__ import annotations

PAPER_LABEL = "paper (Cheng et al. 2024, GPT-4 judge)"

# Test-set file stems of the BPO release -> the column names the paper uses, in its order.
TEST_SETS = {
    "vicuna_eval": "Vicuna",
    "self_instruct_eval": "Self-instruct",
    "dolly_eval": "Dolly",
    "bpo_test": "BPO-test",
}

# model -> test set -> (win, tie, lose) in percent; "dWR" -> the paper's dWR in percent.
PAPER_RESULTS: dict[str, dict[str, tuple[float, float, float] | float]] = {
    "gpt-3.5-turbo": {
        "vicuna_eval": (60.0, 8.7, 31.3),
        "self_instruct_eval": (50.4, 12.3, 37.3),
        "dolly_eval": (55.0, 16.0, 29.0),
        "bpo_test": (51.0, 18.0, 31.0),
        "dWR": 22.0,
    },
    "gpt-4": {
        "vicuna_eval": (41.3, 23.7, 35.0),
        "self_instruct_eval": (39.7, 22.6, 37.7),
        "dolly_eval": (51.0, 26.0, 23.0),
        "bpo_test": (39.0, 26.0, 35.0),
        "dWR": 10.1,
    },
    "claude-2": {
        "vicuna_eval": (57.5, 5.0, 37.5),
        "self_instruct_eval": (48.8, 12.7, 38.5),
        "dolly_eval": (44.5, 13.0, 42.5),
        "bpo_test": (45.0, 13.0, 42.0),
        "dWR": 8.8,
    },
}
