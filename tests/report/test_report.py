"""The report: the paper-layout table from hand-made judgments, paper rows, chart, report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from bpo_ray.errors import InputError
from bpo_ray.evaluate.stats import summarize
from bpo_ray.report import ReportConfig, print_table, run_report
from bpo_ray.report.paper import PAPER_LABEL

# (target, dataset) -> outcome of each pair; each pair judged in both orders.
OUTCOMES = {
    ("t1", "vicuna_eval"): ["win", "win", "tie", "lose"],             # 50 / 25 / 25, dWR +25
    ("t1", "dolly_eval"): ["win", "flip", "lose", "lose", "unparsed"],  # 25 / 25 / 50, dWR -25
    ("t2", "vicuna_eval"): ["win", "win", "win", "tie"],              # 75 / 25 / 0, dWR +75
    ("t2", "dolly_eval"): ["win", "tie", "tie", "tie", "lose"],       # 20 / 60 / 20, dWR 0
}
WINNERS = {"win": ("optimized", "optimized"), "tie": ("tie", "tie"), "lose": ("original", "original"),
           "flip": ("optimized", "original"), "unparsed": ("optimized", "unparsed")}


def judgments() -> list[dict]:
    rows = []
    for (target, dataset), outcomes in OUTCOMES.items():
        for i, outcome in enumerate(outcomes):
            for order, winner in zip(("optimized_first", "original_first"), WINNERS[outcome]):
                rows.append({"id": f"{dataset}-{i}", "dataset": dataset, "target": target,
                             "category": "math" if i % 2 else "writing", "order": order, "winner": winner,
                             "original_response": "short answer", "optimized_response": "a longer answer here"})
    return rows


def write_run(folder: Path, rows: list[dict], summary: dict | None, fmt: str = "parquet") -> str:
    (folder / "judgments").mkdir(parents=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), folder / "judgments" / "part-0.parquet")
    else:
        (folder / "judgments" / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return str(folder)


def table_row(markdown: str, first_cells: tuple[str, ...]) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if tuple(cells[: len(first_cells)]) == first_cells:
            return cells
    raise AssertionError(f"no row starting {first_cells} in:\n{markdown}")


@pytest.fixture
def run_dir(tmp_path: Path) -> str:
    return write_run(tmp_path / "eval", judgments(), {"model": "gpt-4o", "optimizer": "bpo-7b"})


def test_main_table(run_dir, tmp_path):
    report = run_report(ReportConfig(input=[run_dir], output=str(tmp_path / "out")))
    md = (tmp_path / "out" / "report.md").read_text()
    header = table_row(md, ("target model",))
    assert header[:5] == ["target model", "optimizer", "Vicuna", "Dolly", "dWR"]
    t1 = table_row(md, ("t1", "bpo-7b"))
    assert t1[2:5] == ["50.0 / 25.0 / 25.0", "25.0 / 25.0 / 50.0", "+0.0"]  # dWR: (25 - 25) / 2
    assert t1[6] == "9 (8)"  # pairs (parsed): the unparsed pair is reported, not counted
    t2 = table_row(md, ("t2", "bpo-7b"))
    assert t2[2:5] == ["75.0 / 25.0 / 0.0", "20.0 / 60.0 / 20.0", "+37.5"]  # (75 + 0) / 2
    low, high = (float(v) for v in t2[5].strip("[]").split(","))
    assert low < 37.5 < high
    assert PAPER_LABEL not in md
    assert "135M judge" not in md
    # Judge notes: consistency (one flip among the 17 pairs with both orders parsed), unparsed, length.
    assert "on 94.1% of the pairs judged both ways; 1 pair(s) flipped" in md
    assert "Unparsed: 1 of 18 pairs" in md
    assert "average 2.0 words for the original prompts and 4.0 for the optimized ones (2.00x)" in md
    # Per-category breakdown, pooled over the two targets: Vicuna "writing" = pairs 0 and 2 of each.
    assert table_row(md, ("Vicuna", "writing"))[2:4] == ["4", "75.0 / 25.0 / 0.0"]
    # The terminal table carries the same cells.
    text = print_table(report)
    assert "50.0 / 25.0 / 25.0" in text and "20.0 / 60.0 / 20.0" in text and "+37.5" in text
    assert report["table"] == text
    assert report["report_md"].endswith("report.md") and report["chart_png"].endswith("chart.png")


def test_report_json_equals_summarize(run_dir, tmp_path):
    run_report(ReportConfig(input=[run_dir], output=str(tmp_path / "out"), seed=7))
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["inputs"][0]["summary"] == summarize(judgments(), seed=7)
    assert saved["inputs"][0]["judge"] == "gpt-4o" and saved["inputs"][0]["optimizer"] == "bpo-7b"
    row = next(r for r in saved["rows"] if r["target"] == "t2")
    assert row["delta_wr"] == 37.5
    assert row["cells"]["dolly_eval"]["counts"] == [1, 3, 1]


def test_chart_is_a_png(run_dir, tmp_path):
    run_report(ReportConfig(input=[run_dir], output=str(tmp_path / "out"), paper=True))
    png = (tmp_path / "out" / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_paper_rows_only_when_asked(run_dir, tmp_path):
    run_report(ReportConfig(input=[run_dir], output=str(tmp_path / "all"), paper=True))
    md = (tmp_path / "all" / "report.md").read_text()
    header = table_row(md, ("target model",))
    assert header[2:6] == ["Vicuna", "Self-instruct", "Dolly", "BPO-test"]
    assert table_row(md, ("gpt-3.5-turbo", PAPER_LABEL))[2:7] == [
        "60.0 / 8.7 / 31.3", "50.4 / 12.3 / 37.3", "55.0 / 16.0 / 29.0", "51.0 / 18.0 / 31.0", "+22.0"]
    assert table_row(md, ("claude-2", PAPER_LABEL))[6] == "+8.8"
    # The run's row gets no figures for the sets it did not judge.
    assert table_row(md, ("t1", "bpo-7b"))[2:6] == ["50.0 / 25.0 / 25.0", "—", "25.0 / 25.0 / 50.0", "—"]

    run_report(ReportConfig(input=[run_dir], output=str(tmp_path / "one"), paper=["gpt-4"]))
    md = (tmp_path / "one" / "report.md").read_text()
    assert table_row(md, ("gpt-4", PAPER_LABEL))[6] == "+10.1"
    assert "gpt-3.5-turbo" not in md and "claude-2" not in md

    with pytest.raises(ValidationError, match="gpt-5"):
        ReportConfig(input=[run_dir], output="x", paper=["gpt-5"])


def test_tiny_judge_warning_jsonl_and_no_optimizer(tmp_path):
    run = write_run(tmp_path / "eval", judgments(), {"model": "SmolLM2-135M-Instruct"}, fmt="jsonl")
    report = run_report(ReportConfig(input=run, output=str(tmp_path / "out")))
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("a 135M judge is noise: these numbers test the pipeline, not BPO") == 2  # top + run
    assert "a 135M judge is noise" in print_table(report)
    assert table_row(md, ("t1", "(run eval)"))[2] == "50.0 / 25.0 / 25.0"


def test_two_runs_and_missing_summary(tmp_path):
    first = write_run(tmp_path / "a", judgments(), None)
    second = write_run(tmp_path / "b", [r for r in judgments() if r["target"] == "t1"], {"model": "embedded",
                                                                                         "optimizer": "mine"})
    run_report(ReportConfig(input=[first, second], output=str(tmp_path / "out")))
    md = (tmp_path / "out" / "report.md").read_text()
    assert table_row(md, ("t2", "(run a)"))[2] == "75.0 / 25.0 / 0.0"
    assert table_row(md, ("t1", "mine"))[2] == "50.0 / 25.0 / 25.0"
    assert "Judge: unknown; optimizer: unknown." in md


def test_folder_without_judgments(tmp_path):
    with pytest.raises(InputError, match="no judgments"):
        run_report(ReportConfig(input=[str(tmp_path)], output=str(tmp_path / "out")))
