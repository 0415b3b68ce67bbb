"""The README's demo: the whole pipeline on the embedded model (construct, train, optimize,
generate, evaluate, report), then resumed after the evaluate stage was cut short."""

import pyarrow.parquet as pq
import pytest

from bpo_ray.data.ledger import read_table
from bpo_ray.demo import run_demo

SMALL = {"construct.limit": 5, "optimize.limit": 3}  # the demo's data, fewer rows


@pytest.mark.slow
def test_demo_pipeline_end_to_end_and_resumed(tmp_path, ray_local, capsys):
    out = tmp_path / "run"
    result = run_demo(output=str(out), overrides=SMALL)
    stages = result["stages"]
    assert list(stages) == ["construct", "train", "optimize", "generate", "evaluate", "report"]
    construct = stages["construct"]
    assert construct["rows_in"] == 5 and construct["rows_out"] + construct["rows_rejected"] == 5
    assert stages["train"]["finished"] and (out / "optimizer" / "model.safetensors").exists()
    assert stages["optimize"]["rows_in"] == 3 and stages["generate"]["rows_out"] == 3 - stages["optimize"]["rows_rejected"]
    evaluate = stages["evaluate"]
    pairs = stages["generate"]["rows_out"]
    assert evaluate["rows_in"] == 2 * pairs == evaluate["rows_out"]  # both orders, every pair judged
    overall = evaluate["overall"]
    assert overall["n"] == pairs and overall["unparsed"] == 0  # logprob verdicts: always a verdict
    assert overall["win"] + overall["tie"] + overall["lose"] == pairs
    judgments = read_table(str(out / "evaluate"), "judgments", "parquet")
    assert judgments.column("optimizer").to_pylist()[0] == str(out / "optimizer")
    report = (out / "report" / "report.md").read_text()
    assert "a 135M judge is noise" in report and (out / "report" / "chart.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "W / T / L" in printed or "pairs (parsed)" in printed  # the main table closes the run

    # Interrupted: the evaluate ledger holds only its first judgments. A re-run skips every
    # finished stage and judges only what is missing.
    parts = sorted((out / "evaluate" / "judgments").glob("*.parquet"))
    kept = pq.read_table(parts[0]).slice(0, 1)
    for part in parts:
        part.unlink()
    pq.write_table(kept, parts[0])
    again = run_demo(output=str(out), overrides=SMALL)["stages"]
    assert again["construct"]["rows_skipped"] == 5 and again["construct"]["requests"] == 0
    assert "skipped" in again["train"]
    assert again["optimize"]["rows_skipped"] == 3 and again["generate"]["requests"] == 0
    assert again["evaluate"]["rows_skipped"] == 1 and again["evaluate"]["rows_out"] == 2 * pairs - 1
    keys = read_table(str(out / "evaluate"), "judgments", "parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 2 * pairs
    assert again["evaluate"]["overall"] == overall  # greedy verdicts: the same statistics
