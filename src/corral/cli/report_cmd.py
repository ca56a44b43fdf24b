"""``corral report``: one aggregated table of a run (or several runs side by side) from the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

ARGS = typer.Argument(None, help="[CAMPAIGN.yaml] [NAME] [key=value overrides...]  (NAME: a report of the "
                                 "campaign's report: section)", show_default=False)


def report(args: Optional[List[str]] = ARGS,
           ledger: Optional[str] = typer.Option(None, "--ledger", help="Ledger URL or SQLite path."),
           run_ids: Optional[List[str]] = typer.Option(
               None, "--run-id", help="A run to report on; repeat to compare runs as columns (default: the newest "
                                      "run of the campaign)."),
           where: Optional[List[str]] = typer.Option(
               None, "--where", "-w", help="Report on the runs where KEY=VALUE (as in `corral runs --where`)."),
           by: Optional[List[str]] = typer.Option(
               None, "--by", help="Group by these dimensions, comma-separated: item parameters (setting), config "
                                  "values of the run (params.seed, or policy for params.policy), stage, run, "
                                  "result.FIELD."),
           metric: Optional[str] = typer.Option(
               None, "--metric", help="The boolean result field to rate (or a numeric one to average); default: "
                                      "success, else the first boolean result field of the task's own."),
           stage: Optional[str] = typer.Option(
               None, "--stage", help="Only this stage (default: the first per-item stage, unless --by stage)."),
           fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table | json | md | csv | latex | html "
                                                                         "(default: from the -o file's suffix)"),
           out_file: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout (.tex, "
                                                                                 ".md, .json, .csv, .html name the "
                                                                                 "format)."),
           plot_file: Optional[Path] = typer.Option(
               None, "--plot", help="Also save a PNG: the metric by the first --by dimension, and progress over "
                                    "time."),
           top: Optional[int] = typer.Option(
               None, "--top", min=1, help="Also list the N best and the N worst groups by the metric."),
           compare: Optional[bool] = typer.Option(
               None, "--compare/--pool", help="Several runs as columns (default when no --by dimension is a "
                                              "config value), or pooled."),
           paired_by: Optional[str] = typer.Option(
               None, "--paired-by", help="Compare this dimension's values (policy, method) on the units they share: "
                                         "McNemar's exact test for booleans, the paired t-test for numbers."),
           pair_on: Optional[List[str]] = typer.Option(
               None, "--pair-on", help="The item parameters that make a unit, comma-separated (default: every item "
                                       "parameter but the --paired-by one)."),
           baseline: Optional[str] = typer.Option(
               None, "--baseline", help="The --paired-by value the others are compared with (default: the first)."),
           paired_test: Optional[str] = typer.Option(
               None, "--paired-test", help="The paired test of numbers: t (the paired t-test, default) or wilcoxon "
                                           "(the signed-rank test, with the Hodges-Lehmann difference)."),
           columns: Optional[str] = typer.Option(
               None, "--columns", help="This dimension's values as the columns (e.g. --by setting --columns policy)."),
           lower_is_better: Optional[List[str]] = typer.Option(
               None, "--lower-is-better", help="Result fields whose lowest value is best (bold in LaTeX, best/worst)."),
           caption: Optional[str] = typer.Option(None, "--caption", help="LaTeX: a table environment with this "
                                                                         "caption."),
           label: Optional[str] = typer.Option(None, "--label", help="LaTeX: a table environment with this label."),
           ) -> None:
    """Success rates, means and 95% intervals per group, from the ledger: table, JSON, Markdown, CSV, LaTeX,
    HTML, PNG. With no options, the campaign's named reports (its report: section)."""
    from corral.cli.main import _campaign
    from corral.cli.output import err

    campaign, names = _campaign(args, ledger, positional=1)
    try:
        report = campaign.report(names[0] if names else None, run_id=run_ids, where=where, by=by, metric=metric,
                                 stage=stage, compare=compare, format=fmt, output=out_file, plot=plot_file,
                                 top=top, paired_by=paired_by, pair_on=pair_on, baseline=baseline,
                                 paired_test=paired_test, columns=columns, lower_is_better=lower_is_better,
                                 caption=caption, label=label)
        try:
            written = report.write(echo=_echo)
        finally:
            report.close()
    finally:
        campaign.close()
    for path in written:
        err.print(f"wrote {path}", highlight=False)


def _echo(section, fmt: str) -> None:
    """A table to the terminal (rich, as wide as it is), any other format as text to stdout."""
    import sys

    if fmt == "table" and section.paired:
        sys.stdout.write(section.render(fmt))
        sys.stdout.flush()
    elif fmt == "table":
        from corral.cli.output import out
        from corral.report.render import rich_table

        out.print(rich_table(section.table))
    else:
        sys.stdout.write(section.render(fmt))
        sys.stdout.flush()
