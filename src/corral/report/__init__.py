"""Reports: one aggregated table from the ledger, rendered as a terminal table, JSON, Markdown, CSV,
LaTeX, HTML or a PNG plot."""

from corral.report.aggregate import Report, aggregate, progress_over_time
from corral.report.render import FORMATS, plot, render
from corral.report.stats import Stats, mean_std_ci, summarize_values, wilson

__all__ = ["FORMATS", "Report", "Stats", "aggregate", "mean_std_ci", "plot", "progress_over_time", "render",
           "summarize_values", "wilson"]
