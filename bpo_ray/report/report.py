"""The report of one or more evaluate runs: DIR/report.md, DIR/chart.png, DIR/report.json.

The statistics are recomputed from each run's judgments table (never copied from its summary),
so a report can pool or compare runs and always matches `bpo_ray.evaluate.stats.summarize`.
The main table has the paper's layout: one row per (target model, optimizer), one column per
test set with win / tie / lose in percent, then dWR (the mean over the row's test sets of
win - lose, the paper's definition) with a bootstrap 95% interval.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bpo_ray.config import Paths
from bpo_ray.data.ledger import filesystem_and_path, read_table
from bpo_ray.errors import InputError
from bpo_ray.evaluate.stats import judgment_rows, summarize
from bpo_ray.report.paper import PAPER_LABEL, PAPER_RESULTS, TEST_SETS

log = logging.getLogger(__name__)

TINY_JUDGE_MARKS = ("embedded", "135m", "smollm")
TINY_JUDGE_WARNING = "a 135M judge is noise: these numbers test the pipeline, not BPO"
NONE = "—"


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: Paths = Field(..., min_length=1, description="Evaluate output folders (each holds judgments/ and summary.json).")
    output: str = Field(..., description="Folder for report.md, chart.png and report.json.")
    paper: bool | list[str] = Field(
        False, description="Put the paper's own figures beside the run's: true for every model in it, "
        f"or a list of its models ({', '.join(PAPER_RESULTS)}).")
    seed: int = Field(0, description="Seed of the bootstrap confidence intervals.")
    resamples: int = Field(2000, ge=100, description="Bootstrap resamples per interval.")

    @field_validator("paper")
    @classmethod
    def _known_paper_models(cls, value):
        if isinstance(value, list):
            unknown = [m for m in value if m not in PAPER_RESULTS]
            if unknown:
                raise ValueError(f"not in the paper's table: {', '.join(unknown)} (known: {', '.join(PAPER_RESULTS)})")
        return value

    def paper_models(self) -> list[str]:
        if self.paper is True:
            return list(PAPER_RESULTS)
        return list(self.paper) if self.paper else []


@dataclass
class Run:
    folder: str
    judge: str | None
    optimizer: str | None
    rows: list[dict]


# ---------------------------------------------------------------------------------------------
# Reading

def load_run(folder: str) -> Run:
    """One evaluate run: its judgments (Parquet or JSON Lines parts) and the names in its
    summary.json (judge: `judge` or `model`; `optimizer` when present)."""
    rows: list[dict] = []
    for fmt in ("parquet", "jsonl"):
        table = read_table(folder, "judgments", fmt)
        if table is not None:
            rows.extend(judgment_rows(table))
    if not rows:
        raise InputError(f"{folder}: no judgments (expected {folder}/judgments/*.parquet or *.jsonl)")
    summary = _read_summary(folder)
    if setting := summary.get("judge_setting"):
        # A folder re-judged with another judge or prompt keeps the old judgments too: report
        # the setting of its last run.
        rows = [r for r in rows if r.get("judge_setting", setting) == setting]
    return Run(folder=folder, judge=_name(summary.get("judge") or summary.get("model")),
               optimizer=_name(summary.get("optimizer")), rows=rows)


def _read_summary(folder: str) -> dict[str, Any]:
    fs, base = filesystem_and_path(folder)
    try:
        with fs.open_input_stream(f"{base.rstrip('/')}/summary.json") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        log.warning("%s: no summary.json; judge and optimizer names unknown", folder)
        return {}
    except json.JSONDecodeError as exc:
        raise InputError(f"{folder}/summary.json: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _name(value: Any) -> str | None:
    """A model's name from a summary value: a string, or a model spec written as a mapping."""
    if isinstance(value, dict):
        value = value.get("model") or value.get("name") or value.get("path")
    return str(value) if value else None


def is_tiny_judge(name: str | None) -> bool:
    return bool(name) and any(mark in name.lower() for mark in TINY_JUDGE_MARKS)


# ---------------------------------------------------------------------------------------------
# The report as data

def run_report(cfg: ReportConfig) -> dict[str, Any]:
    """Read the runs, compute their statistics, write report.md, chart.png and report.json
    into cfg.output. Returns what report.json holds, plus the written paths (`report_md`,
    `chart_png`, `report_json`) and `table`, the main table as terminal text."""
    runs = [load_run(folder) for folder in cfg.input]
    summaries = [summarize(run.rows, seed=cfg.seed, resamples=cfg.resamples) for run in runs]
    paper_models = cfg.paper_models()
    datasets = {d for s in summaries for cells in s["by_target_dataset"].values() for d in cells}
    if paper_models:
        datasets |= set(TEST_SETS)
    columns = order_datasets(datasets)

    table = [row for run, summary in zip(runs, summaries) for row in _run_rows(run, summary)]
    table += [_paper_row(model) for model in paper_models]
    report = {
        "inputs": [
            {"folder": run.folder, "judge": run.judge, "optimizer": run.optimizer,
             "tiny_judge": is_tiny_judge(run.judge), "summary": summary}
            for run, summary in zip(runs, summaries)
        ],
        "columns": columns,
        "column_names": {c: display_dataset(c) for c in columns},
        "rows": table,
        "paper": paper_models,
        "seed": cfg.seed,
        "resamples": cfg.resamples,
    }
    files = _write_outputs(cfg.output, report)
    # For the caller: the paths, and the main table as terminal text (not in report.json).
    return {**report, "files": files, "report_md": files["markdown"], "chart_png": files["chart"],
            "report_json": files["json"], "table": print_table(report)}


def order_datasets(names: set[str]) -> list[str]:
    """The paper's test sets in its order, then any others by name."""
    known = list(TEST_SETS)
    return sorted(names, key=lambda n: (known.index(_stem(n)) if _stem(n) in known else len(known), n))


def display_dataset(name: str) -> str:
    return TEST_SETS.get(_stem(name), name or "(unnamed)")


def _stem(name: str) -> str:
    base = PurePath(name).name
    for suffix in (".jsonl", ".json", ".parquet"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _optimizer_label(run: Run) -> str:
    return run.optimizer or f"(run {PurePath(run.folder.rstrip('/')).name})"


def _run_rows(run: Run, summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for target, cells in summary["by_target_dataset"].items():
        mean = summary["mean_delta_wr_by_target"][target]
        rows.append({
            "source": "run",
            "folder": run.folder,
            "target": target or "(unnamed target)",
            "optimizer": _optimizer_label(run),
            "judge": run.judge,
            "cells": {dataset: _cell(stats) for dataset, stats in cells.items()},
            "delta_wr": _pct(mean["delta_wr"]),
            "delta_wr_ci95": [_pct(v) for v in mean["delta_wr_ci95"]],
            "pairs": sum(s["n"] for s in cells.values()),
            "parsed": sum(s["win"] + s["tie"] + s["lose"] for s in cells.values()),
        })
    return rows


def _cell(stats: dict[str, Any]) -> dict[str, Any]:
    parsed = stats["win"] + stats["tie"] + stats["lose"]

    def share(count: int) -> float | None:
        return round(100 * count / parsed, 2) if parsed else None

    return {
        "win": share(stats["win"]), "tie": share(stats["tie"]), "lose": share(stats["lose"]),
        "counts": [stats["win"], stats["tie"], stats["lose"]],
        "delta_wr": _pct(stats["delta_wr"]), "delta_wr_ci95": [_pct(v) for v in stats["delta_wr_ci95"]],
        "n": stats["n"], "parsed": parsed,
    }


def _paper_row(model: str) -> dict[str, Any]:
    figures = PAPER_RESULTS[model]
    cells = {}
    for dataset in TEST_SETS:
        win, tie, lose = figures[dataset]
        cells[dataset] = {"win": win, "tie": tie, "lose": lose, "counts": None, "delta_wr": round(win - lose, 2),
                          "delta_wr_ci95": [None, None], "n": None, "parsed": None}
    return {"source": "paper", "folder": None, "target": model, "optimizer": PAPER_LABEL, "judge": "gpt-4",
            "cells": cells, "delta_wr": figures["dWR"], "delta_wr_ci95": [None, None], "pairs": None, "parsed": None}


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


# ---------------------------------------------------------------------------------------------
# Text

def format_wtl(cell: dict[str, Any] | None) -> str:
    if not cell or cell["win"] is None:
        return NONE
    if cell.get("counts"):  # from the counts, not the rounded shares: one rounding only
        total = sum(cell["counts"])
        return " / ".join(f"{100 * c / total:.1f}" for c in cell["counts"])
    return f"{cell['win']:.1f} / {cell['tie']:.1f} / {cell['lose']:.1f}"


def format_delta(value: float | None) -> str:
    return NONE if value is None else f"{value:+.1f}"


def format_ci(ci: list[float | None]) -> str:
    return NONE if ci[0] is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def groups_table(title: str, groups: dict[str, dict[str, Any]]):
    """Win / tie / lose per group of one evaluate summary (overall, by dataset, by target) as a
    rich Table: what `bpo-ray evaluate` prints at the end of a run."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("group", "pairs", "W / T / L %", "dWR", "95% CI", "unparsed", "consistent", "words orig/opt"):
        table.add_column(name, justify="left" if name == "group" else "right", no_wrap=name != "group")
    for name, stats in groups.items():
        cell = _cell(stats)
        consistency = NONE if stats["consistency"] is None else f"{100 * stats['consistency']:.0f}%"
        table.add_row(name, str(stats["n"]), format_wtl(cell), format_delta(cell["delta_wr"]),
                      format_ci(cell["delta_wr_ci95"]), str(stats["unparsed"]), consistency, _lengths(stats))
    return table


def main_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The paper-layout table as header and rows of strings."""
    header = ["target model", "optimizer", *(report["column_names"][c] for c in report["columns"]),
              "dWR", "95% CI", "pairs (parsed)"]
    body = []
    for row in report["rows"]:
        pairs = NONE if row["pairs"] is None else f"{row['pairs']} ({row['parsed']})"
        body.append([row["target"], row["optimizer"], *(format_wtl(row["cells"].get(c)) for c in report["columns"]),
                     format_delta(row["delta_wr"]), format_ci(row["delta_wr_ci95"]), pairs])
    return header, body


def rich_table(report: dict[str, Any]):
    """The main table as a rich Table (paper rows dimmed), for a console of any width."""
    from rich.table import Table

    header, body = main_table(report)
    table = Table(title="BPO: win / tie / lose (%) of the optimized prompt's answer", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row, cells in zip(report["rows"], body):
        table.add_row(*cells, style="dim" if row["source"] == "paper" else None)
    return table


def print_table(report: dict[str, Any]) -> str:
    """The main table as plain terminal text, with the tiny-judge warning above it."""
    from rich.console import Console

    out = io.StringIO()
    width = max(120, 24 * (len(report["columns"]) + 5))
    console = Console(file=out, width=width, color_system=None, force_terminal=False)
    for warning in _warnings(report):
        console.print(f"WARNING: {warning}", markup=False, highlight=False)
    console.print(rich_table(report))
    return out.getvalue()


def _warnings(report: dict[str, Any]) -> list[str]:
    tiny = [i["judge"] for i in report["inputs"] if i["tiny_judge"]]
    return [f"{TINY_JUDGE_WARNING} (judge: {', '.join(dict.fromkeys(tiny))})"] if tiny else []


def _md_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in body)])


def render_markdown(report: dict[str, Any]) -> str:
    out = ["# BPO evaluation report", ""]
    for warning in _warnings(report):
        out += [f"> **WARNING: {warning}.**", ""]
    out += [
        "Win / tie / lose (%) of the target model's answer to the optimized prompt against its answer "
        "to the original prompt, over the pairs the judge gave a verdict on (unparsed pairs are "
        "reported below, never counted). dWR is the mean over the row's test sets of win % - lose % "
        "(the paper's definition); its 95% interval is a seeded percentile bootstrap over the pairs, "
        "resampled within each test set.",
        "",
        _md_table(*main_table(report)),
        "",
    ]
    if report["paper"]:
        out += [f"Rows labelled \"{PAPER_LABEL}\" are the paper's own figures (ACL 2024, main results table), "
                "not measured here: a different judge, different target models and the released optimizer.", ""]
    out += ["![win / tie / lose per test set](chart.png)", ""]
    for run in report["inputs"]:
        out += _run_section(run)
    return "\n".join(out).rstrip() + "\n"


def _run_section(run: dict[str, Any]) -> list[str]:
    s = run["summary"]
    overall = s["overall"]
    out = [f"## {run['folder']}", "",
           f"Judge: {run['judge'] or 'unknown'}; optimizer: {run['optimizer'] or 'unknown'}.", ""]
    if run["tiny_judge"]:
        out += [f"> **WARNING: {TINY_JUDGE_WARNING}.**", ""]
    # Judge reliability: position consistency, unparsed replies, length.
    notes = []
    both = overall["consistency"]
    if both is None:
        notes.append("Each pair was judged in one order only: the judge's position bias is not measured "
                     "(judge both orders to measure it).")
    else:
        notes.append(f"Consistency: the judge agreed with itself across the two answer orders on "
                     f"{100 * both:.1f}% of the pairs judged both ways; {overall['inconsistent']} "
                     f"pair(s) flipped with the order and count as ties.")
    notes.append(f"Unparsed: {overall['unparsed']} of {overall['n']} pairs got no verdict in at least one order; "
                 "they count as neither win nor loss.")
    lo, lz = overall["mean_len_original"], overall["mean_len_optimized"]
    if lo is not None:
        ratio = f" ({lz / lo:.2f}x)" if lo else ""
        notes.append(f"Length: the answers average {lo:.1f} words for the original prompts and {lz:.1f} for the "
                     f"optimized ones{ratio}. Judges tend to prefer the longer answer, so a win rate that "
                     "follows the length ratio is partly length bias.")
    out += [f"- {n}" for n in notes] + [""]
    if len(s["by_target"]) > 1:
        header = ["target model", "pairs", "W / T / L", "dWR", "95% CI", "consistency", "words orig / opt"]
        body = [[t or "(unnamed target)", str(g["n"]), _wtl_of(g), format_delta(_pct(g["delta_wr"])),
                 format_ci([_pct(v) for v in g["delta_wr_ci95"]]), _share(g["consistency"]), _lengths(g)]
                for t, g in s["by_target"].items()]
        out += ["Per target model, pooled over test sets:", "", _md_table(header, body), ""]
    if s["by_category"]:
        header = ["test set", "category", "pairs", "W / T / L", "dWR", "95% CI", "words orig / opt"]
        body = [[display_dataset(d), c, str(g["n"]), _wtl_of(g), format_delta(_pct(g["delta_wr"])),
                 format_ci([_pct(v) for v in g["delta_wr_ci95"]]), _lengths(g)]
                for d, cats in s["by_category"].items() for c, g in cats.items()]
        pooled = " (pooled over target models)" if len(s["by_target"]) > 1 else ""
        out += [f"Per category{pooled}:", "", _md_table(header, body), ""]
    return out


def _wtl_of(stats: dict[str, Any]) -> str:
    return format_wtl(_cell(stats))


def _share(value: float | None) -> str:
    return NONE if value is None else f"{100 * value:.1f}%"


def _lengths(stats: dict[str, Any]) -> str:
    if stats["mean_len_original"] is None:
        return NONE
    return f"{stats['mean_len_original']:.1f} / {stats['mean_len_optimized']:.1f}"


# ---------------------------------------------------------------------------------------------
# Chart

def render_chart(report: dict[str, Any]) -> bytes:
    """Stacked win / tie / lose bars, one per (row, test set), beside each bar's dWR with its
    95% interval. PNG bytes."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend state, Agg by default
    )
    from matplotlib.patches import Patch

    bars = []  # (label, cell, is_paper)
    for row in report["rows"]:
        for dataset in report["columns"]:
            cell = row["cells"].get(dataset)
            if cell and cell["win"] is not None:
                who = "paper" if row["source"] == "paper" else _short(row["optimizer"])
                label = f"{row['target']} · {who}\n{report['column_names'][dataset]}"
                bars.append((label, cell, row["source"] == "paper"))
    fig = Figure(figsize=(11, 1.6 + 0.5 * max(len(bars), 1)), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    ys = list(range(len(bars)))[::-1]
    colors = {"win": "#2e7d32", "tie": "#9e9e9e", "lose": "#c62828"}
    for y, (_, cell, paper) in zip(ys, bars):
        start = 0.0
        hatch = "//" if paper else None
        for part in ("win", "tie", "lose"):
            left.barh(y, cell[part], left=start, color=colors[part], hatch=hatch, edgecolor="white")
            if cell[part] >= 8:
                left.text(start + cell[part] / 2, y, f"{cell[part]:.0f}", ha="center", va="center",
                          color="white", fontsize=8)
            start += cell[part]
        delta, ci = cell["delta_wr"], cell["delta_wr_ci95"]
        if ci[0] is not None:
            right.errorbar(delta, y, xerr=[[delta - ci[0]], [ci[1] - delta]], fmt="o", color="black", capsize=3)
        else:
            right.plot(delta, y, marker="D", color="#555555", linestyle="none")
        right.annotate(f"{delta:+.1f}", (delta, y), textcoords="offset points", xytext=(0, 7),
                       ha="center", fontsize=8)
    left.set_yticks(ys, [b[0] for b in bars], fontsize=8)
    left.set_xlim(0, 100)
    left.set_xlabel("% of parsed pairs: win / tie / lose (hatched: the paper's figures)")
    handles = [Patch(color=c, label=p) for p, c in colors.items()]
    left.legend(handles=handles, loc="lower right", fontsize=8, ncols=3)
    right.axvline(0, color="#888888", linewidth=1)
    right.set_xlabel("dWR = win - lose (%), 95% bootstrap CI")
    warnings = _warnings(report)
    fig.suptitle("BPO: optimized vs original prompt" + (f"\n{warnings[0]}" if warnings else ""),
                 color="#c62828" if warnings else "black")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Writing

def _write_outputs(output: str, report: dict[str, Any]) -> dict[str, str]:
    fs, base = filesystem_and_path(output)
    base = base.rstrip("/")
    fs.create_dir(base, recursive=True)
    files = {"markdown": f"{base}/report.md", "chart": f"{base}/chart.png", "json": f"{base}/report.json"}
    contents = {
        "markdown": render_markdown(report).encode("utf-8"),
        "chart": render_chart(report),
        "json": (json.dumps({**report, "files": files}, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    }
    for kind, path in files.items():
        with fs.open_output_stream(path) as out:
            out.write(contents[kind])
    return files
