"""sft-rewrite: one plan, optimizer actors then target actors, writing the paper's
BPO-reproduced Alpaca columns."""

from __future__ import annotations

import json

import pytest

from bpo_ray.data.ledger import read_table
from bpo_ray.sft_rewrite.config import SftRewriteConfig
from bpo_ray.sft_rewrite.job import run_sft_rewrite
from bpo_ray.testing.scripted_server import ScriptedOpenAIServer

pytestmark = pytest.mark.usefixtures("ray_local")


def rewrite(body: dict) -> str:
    """The optimizer: repeats the instruction with a request for detail (the context, if any,
    comes back after it, as the released model does), and leaves the haiku as it is."""
    text = body["messages"][-1]["content"].split("\n\n", 1)[1]
    instruction, _, context = text.partition("\n\n")
    if "haiku" in instruction:
        return instruction
    return f"{instruction} Be specific and complete." + (f"\n\n{context}" if context else "")


def answer(body: dict) -> str:
    return "RES: " + body["messages"][-1]["content"]


def test_sft_rewrite_writes_alpaca_columns_in_one_plan(tmp_path, fixture_data):
    data = fixture_data / "sft_alpaca.json"
    source = json.loads(data.read_text())
    with ScriptedOpenAIServer(reply_fn=rewrite) as opt, ScriptedOpenAIServer(reply_fn=answer) as target:
        summary = run_sft_rewrite(SftRewriteConfig(
            input=[str(data)], output=str(tmp_path / "out"),
            optimizer={"provider": "openai", "model": "scripted", "base_url": opt.base_url},
            target={"provider": "openai", "model": "scripted", "base_url": target.base_url}))
        target_requests = target.stats.requests
    assert summary["rows_in"] == len(source) == summary["rows_out"] + summary["rows_rejected"]
    assert summary["rows_rejected"] == 0 and summary["rows_unchanged"] == 1
    assert target_requests == len(source)  # one answer per row: the optimized instruction only
    rows = read_table(str(tmp_path / "out"), "sft", "parquet").to_pylist()
    assert set(rows[0]) == {"id", "key", "instruction", "input", "output", "optimized_prompt", "res", "unchanged",
                            "optimize_model", "generate_model"}
    by_instruction = {r["instruction"]: r for r in rows}
    for item in source:
        row = by_instruction[item["instruction"]]
        assert row["input"] == item["input"] and row["output"] == item["output"]
        if "haiku" in item["instruction"]:
            assert row["unchanged"] and row["optimized_prompt"] == item["instruction"]
        else:
            assert row["optimized_prompt"] == item["instruction"] + " Be specific and complete."
        joined = row["optimized_prompt"] + (f"\n\n{item['input']}" if item["input"] else "")
        assert row["res"] == "RES: " + joined  # the target answered the optimized instruction + input
