"""``corral report``: one aggregated table of a run (or several runs side by side) from the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from corral.errors import CorralError

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
                                      "the first boolean result field."),
           stage: Optional[str] = typer.Option(
               None, "--stage", help="Only this stage (default: the first per-item stage, unless --by stage)."),
           fmt: Optional[str] = typer.Option(None, "--format", "-f", help="table | json | md | csv | latex | html"),
           out_file: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
           plot_file: Optional[Path] = typer.Option(
               None, "--plot", help="Also save a PNG: the metric by the first --by dimension, and progress over "
                                    "time."),
           compare: Optional[bool] = typer.Option(
               None, "--compare/--pool", help="Several runs as columns (default when no --by dimension is a "
                                              "config value), or pooled."),
           ) -> None:
    """Success rates, means and 95% intervals per group, from the ledger: table, JSON, Markdown, CSV, LaTeX,
    HTML, PNG. With no options, the campaign's named reports (its report: section)."""
    from corral.cli.main import _campaign
    from corral.report import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise CorralError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    campaign, names = _light_campaign(args, ledger, run_ids, where)
    if campaign is None:
        campaign, names = _campaign(args, ledger, positional=1)
    try:
        named = campaign.spec.report
        if names:
            if names[0] not in named:
                from corral.errors import SpecError

                raise SpecError(f"no report named {names[0]!r}", file=str(campaign.loaded.path), key="report",
                                expected=("one of " + ", ".join(named)) if named else
                                "a report: section with named reports (see docs/reports.md)")
            chosen = {names[0]: named[names[0]]}
        elif named and not any((run_ids, where, by, metric, stage, fmt, out_file, plot_file, compare is not None)):
            chosen = dict(named)
        else:
            chosen = {}
        if not chosen:
            rows = _runs(campaign, run_ids, where)
            _produce(campaign, rows, by or [], metric, stage, compare, fmt or "table", out_file, plot_file)
            return
        for name, spec in chosen.items():
            rows = _runs(campaign, run_ids, list(where or []) + spec.runs)
            formats = [fmt] if fmt else spec.formats
            for one in formats:
                # -f without -o prints, as for any report; the section's formats go to its files.
                target = out_file if out_file is not None else (
                    None if one == "table" or fmt else campaign.root / spec.path_for(name, one))
                if target is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                plot = plot_file or (campaign.root / spec.plot if spec.plot and one == formats[0] else None)
                try:
                    _produce(campaign, rows, by or spec.by, metric or spec.metric, stage or spec.stage,
                             compare if compare is not None else spec.compare, one, target, plot)
                except CorralError as exc:
                    raise CorralError(f"{campaign.loaded.path}: report.{name}: {exc}") from None
    finally:
        campaign.close()


class _SqliteCampaign:
    """The part of ``Campaign`` a report uses, over a SQLite ledger read with the standard library."""

    def __init__(self, loaded, reader, rows: dict[str, dict]):
        self.loaded, self.spec, self.root = loaded, loaded.spec, loaded.root
        self._reader, self._rows = reader, rows

    def ledger(self, create: bool = True):
        return self._reader

    def run(self, run_id):
        row = self._rows[run_id]
        return type("RunRow", (), {"row": row})()

    def close(self) -> None:
        self._reader.close()


def _light_campaign(args, ledger, run_ids, where):
    """(campaign, other arguments) read without SQLAlchemy, or (None, None) when the report needs the
    full ledger: PostgreSQL, an older schema, --where or a named report's runs: query, a run id that is
    not exact, no run yet (the full path says what is wrong)."""
    import os

    if where or os.environ.get("CORRAL_REPORT_SQLALCHEMY"):
        return None, None
    from corral.cli.args import split_args
    from corral.ledger.location import campaign_ledger_url, sqlite_path
    from corral.ledger.sqlite_reader import SqliteReader
    from corral.spec import load_campaign

    path, overrides, others = split_args(args, positional=1)
    if len(others) > 1:
        return None, None
    loaded = load_campaign(path, overrides)
    if any(named.runs for named in loaded.spec.report.values()):
        return None, None
    url = campaign_ledger_url(loaded.root, loaded.spec.workdir, loaded.spec.ledger, ledger)
    reader = SqliteReader.open(sqlite_path(url))
    if reader is None:
        return None, None
    rows = {}
    for ref in run_ids or [None]:
        row = reader.run(ref) if ref is not None else reader.newest_run(loaded.spec.name)
        if row is None:
            reader.close()
            return None, None
        rows[ref] = row
    return _SqliteCampaign(loaded, reader, rows), others


def _runs(campaign, run_ids, where) -> list[dict]:
    if run_ids:
        return [campaign.run(r).row for r in run_ids]
    if where:
        found = campaign.registry().list(where=where)
        if not found:
            raise CorralError(f"no run matches {' and '.join(where)}")
        ids = [r["id"] for r in found]
        return [campaign.ledger(create=False).get_run(i) for i in ids]
    return [campaign.run(None).row]


def _produce(campaign, rows, by, metric, stage, compare, fmt, out_file, plot_file) -> None:
    from corral.cli import output
    from corral.cli.formats import write_text
    from corral.report import aggregate, plot, progress_over_time, render

    dims = [part for value in (by or []) for part in value.split(",")]
    table = aggregate(campaign.ledger(create=False), rows, by=dims, metric=metric, stage=stage, compare=compare)
    if plot_file is not None:
        series = progress_over_time(campaign.ledger(create=False), [r["id"] for r in rows], table.stage)
        plot(table, plot_file, series)
    if fmt == "table" and out_file is None:
        from corral.report.render import rich_table

        output.out.print(rich_table(table))
    else:
        write_text(render(table, fmt), out_file)
    if plot_file is not None:
        output.err.print(f"wrote {plot_file}", highlight=False)
