"""``corral report``: one aggregated table of a run (or several runs side by side) from the ledger."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from corral.errors import CorralError

ARGS = typer.Argument(None, help="[CAMPAIGN.yaml] [key=value overrides...]", show_default=False)


def report(args: Optional[List[str]] = ARGS,
           ledger: Optional[str] = typer.Option(None, "--ledger", help="Ledger URL or SQLite path."),
           run_ids: Optional[List[str]] = typer.Option(
               None, "--run-id", help="A run to report on; repeat to compare runs as columns (default: the newest "
                                      "run of the campaign)."),
           by: Optional[List[str]] = typer.Option(
               None, "--by", help="Group by these dimensions, comma-separated: item parameters (setting), config "
                                  "values of the run (params.seed, or policy for params.policy), stage, run, "
                                  "result.FIELD."),
           metric: Optional[str] = typer.Option(
               None, "--metric", help="The boolean result field to rate (or a numeric one to average); default: "
                                      "the first boolean result field."),
           stage: Optional[str] = typer.Option(
               None, "--stage", help="Only this stage (default: the first per-item stage, unless --by stage)."),
           fmt: str = typer.Option("table", "--format", "-f", help="table | json | md | csv | latex | html"),
           out_file: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
           plot_file: Optional[Path] = typer.Option(
               None, "--plot", help="Also save a PNG: the metric by the first --by dimension, and progress over "
                                    "time."),
           compare: Optional[bool] = typer.Option(
               None, "--compare/--pool", help="Several runs as columns (default when no --by dimension is a "
                                              "config value), or pooled."),
           ) -> None:
    """Success rates, means and 95% intervals per group, from the ledger: table, JSON, Markdown, CSV, LaTeX,
    HTML, PNG."""
    from corral.cli import output
    from corral.cli.main import _campaign
    from corral.report import FORMATS, aggregate, plot, progress_over_time, render

    if fmt not in FORMATS:
        raise CorralError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    campaign, _ = _campaign(args, ledger)
    try:
        if run_ids:
            rows = [campaign.run(r).row for r in run_ids]
        else:
            rows = [campaign.run(None).row]
        dims = [part for value in (by or []) for part in value.split(",")]
        table = aggregate(campaign.ledger(create=False), rows, by=dims, metric=metric, stage=stage, compare=compare)
        if plot_file is not None:
            series = progress_over_time(campaign.ledger(create=False), [r["id"] for r in rows], table.stage)
            plot(table, plot_file, series)
        if fmt == "table" and out_file is None:
            from corral.report.render import rich_table

            output.out.print(rich_table(table))
        else:
            text = render(table, fmt)
            if out_file is None:
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                tmp = out_file.with_name(f".{out_file.name}.tmp")
                tmp.write_text(text)
                tmp.replace(out_file)
                output.err.print(f"wrote {out_file}", highlight=False)
        if plot_file is not None:
            output.err.print(f"wrote {plot_file}", highlight=False)
    finally:
        campaign.close()
