"""The report of evaluate runs: tables, a chart, and the paper's figures beside them."""

from bpo_ray.report.report import ReportConfig, print_table, run_report

__all__ = ["ReportConfig", "print_table", "run_report"]
