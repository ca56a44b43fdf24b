"""Reports: one aggregated table from the ledger, rendered as a terminal table, JSON, Markdown, CSV,
LaTeX, HTML or a PNG plot."""

from corral.report.aggregate import Report, Stats, aggregate, mean_std_ci, progress_over_time, summarize_values, wilson
from corral.report.render import FORMATS, plot, render

__all__ = ["FORMATS", "Report", "Stats", "aggregate", "mean_std_ci", "plot", "progress_over_time", "render",
           "summarize_values", "wilson"]
