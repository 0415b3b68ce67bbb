"""The README's demo path on the embedded model: Ray Serve + real HTTP + construct, few rows."""

import pytest

from bpo_ray.data.ledger import read_table
from bpo_ray.demo import run_demo
from ports import free_port  # tests/ is on sys.path (conftest)


@pytest.mark.slow
def test_demo_on_the_embedded_model(tmp_path, ray_local):
    summary = run_demo(output=str(tmp_path), port=free_port(), limit=3)
    assert summary["rows_in"] == 3
    assert summary["rows_out"] + summary["rows_rejected"] == 3
    assert summary["requests"] >= 3 and summary["completion_tokens"] > 0
    assert summary["model"].startswith("embedded@http://127.0.0.1:")
    pairs = read_table(str(tmp_path / "construct"), "pairs", "parquet")
    rejected = read_table(str(tmp_path / "construct"), "rejected", "parquet")
    ids = (pairs.column("id").to_pylist() if pairs else []) + (rejected.column("id").to_pylist() if rejected else [])
    assert sorted(ids) == ["demo-01", "demo-02", "demo-03"]
    for row in (pairs.to_pylist() if pairs else []):
        assert row["optimized_prompt"].strip() and row["construct_model"] == "embedded"
    for row in (rejected.to_pylist() if rejected else []):
        assert row["reason"]
    # Step 3 trains on whatever pairs the weak model produced, or says why it did not.
    pairs_made = summary["rows_out"]
    if pairs_made >= 3:
        assert summary["train"]["finished"] and summary["train"]["rows_train"] + summary["train"]["rows_val"] <= pairs_made
        assert (tmp_path / "optimizer" / "model.safetensors").exists()
        assert (tmp_path / "optimizer" / "bpo_template.json").exists()
    else:
        assert summary["train"]["skipped"].startswith(f"{pairs_made} pairs")
