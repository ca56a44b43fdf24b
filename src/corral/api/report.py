"""``corral report`` from Python: ``campaign.report(by=["setting"]).render("md")``.

A Report holds one table per section: the campaign's named reports (its ``report:`` section), or
the one table asked for. A SQLite ledger at this corral's schema version is read with the standard
library (importing SQLAlchemy costs more than most reports take to compute); everything else
(PostgreSQL, an older schema, ``where``, run ids that are only prefixes) through the Ledger.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from corral import outfiles
from corral.errors import CorralError, SpecError

if TYPE_CHECKING:
    from corral.api.campaign import Campaign
    from corral.spec.reports import NamedReport

#: what a table prints when it goes to no file: ``echo(section, format)``
Echo = Callable[["Section", str], None]


class Section:
    """One table: a named report of the campaign, or the one asked for (``name`` None)."""

    def __init__(self, report: "Report", rows: list[dict[str, Any]], *, name: str | None,
                 spec: "NamedReport | None", by: Sequence[str], metric: str | None, stage: str | None,
                 compare: bool | None, top: int | None = None, from_where: bool = False):
        self.report, self.rows, self.name, self.spec = report, rows, name, spec
        self.by = [part for value in by for part in value.split(",")]
        self.metric, self.stage, self.compare, self.top = metric, stage, compare, top
        #: runs found by --where conditions: a run merged into another of them is left out
        self.from_where = from_where
        self._table = None

    def _wrapped(self, exc: CorralError) -> CorralError:
        if self.name is None:
            return exc
        return CorralError(f"{self.report.campaign.loaded.path}: report.{self.name}: {exc}")

    @property
    def table(self):
        """The aggregated table (``corral.report.Report``) every format is rendered from."""
        if self._table is None:
            from corral.report import aggregate

            try:
                self._table = aggregate(self.report.source, self.rows, by=self.by, metric=self.metric,
                                        stage=self.stage, compare=self.compare, top=self.top,
                                        leave_out_merged=True if self.from_where else None)
            except CorralError as exc:
                raise self._wrapped(exc) from None
        return self._table

    @property
    def formats(self) -> list[str]:
        return list(self.spec.formats) if self.spec is not None else ["table"]

    def default_path(self, fmt: str) -> Path | None:
        """Where the named report's ``fmt`` goes (None: a table is printed)."""
        if self.spec is None or fmt == "table":
            return None
        return self.report.campaign.root / self.spec.path_for(self.name, fmt)

    @property
    def default_plot(self) -> Path | None:
        return self.report.campaign.root / self.spec.plot if self.spec is not None and self.spec.plot else None

    def to_dict(self) -> dict[str, Any]:
        return self.table.to_dict()

    def render(self, fmt: str = "table") -> str:
        from corral.report import render

        try:
            return render(self.table, fmt)
        except CorralError as exc:
            raise self._wrapped(exc) from None

    def plot(self, path: str | Path) -> Path:
        """A PNG: the metric by the first dimension, and tasks done over time (``corral[plot]``)."""
        from corral.report import plot, progress_over_time

        table = self.table
        try:
            series = progress_over_time(self.report.source, [r["id"] for r in self.rows], table.stage)
            plot(table, Path(path), series)
        except CorralError as exc:
            raise self._wrapped(exc) from None
        return Path(path)


class Report:
    """The tables of one ``corral report`` command; ``render(format)`` and ``write(path)`` as its options."""

    def __init__(self, campaign: "Campaign", source: Any, format: str | None = None,
                 output: str | Path | None = None, plot: str | Path | None = None):
        self.campaign = campaign
        #: the ledger read: a ``Ledger``, or the standard-library SQLite reader
        self.source = source
        self.format, self.output, self.plot_path = format, output, plot
        self.sections: list[Section] = []

    def __getitem__(self, name: str) -> Section:
        for section in self.sections:
            if section.name == name:
                return section
        raise KeyError(name)

    @property
    def table(self):
        """The aggregated table of the first (usually the only) section."""
        return self.sections[0].table

    def to_dict(self) -> dict[str, Any]:
        """As ``corral report -f json``: one table's dict, or one per named report by name."""
        if len(self.sections) == 1:
            return self.sections[0].to_dict()
        return {s.name: s.to_dict() for s in self.sections}

    def render(self, format: str = "table") -> str:
        """Every section in ``format`` (table, json, md, csv, latex, html), one after the other."""
        check_format(format)
        return "".join(section.render(format) for section in self.sections)

    def write(self, path: str | Path | None = None, format: str | None = None,
              plot: str | Path | None = None, echo: Echo | None = None) -> list[Path]:
        """What ``corral report`` produces: each section in ``format`` (default: the format ``path``'s
        suffix names: ``.tex``, ``.md``, ``.json``, ``.csv``, ``.html``) to ``path``; without a path, a
        named report's formats go to its files and a table (or the format asked for) to ``echo``
        (default: stdout); a PNG to ``plot`` (a named report's own plot with its first format).
        Files are written atomically. Returns the files written."""
        from corral.spec.formats import output_format
        from corral.spec.reports import REPORT_FORMATS

        path = path if path is not None else self.output
        format = output_format(format or self.format, path, REPORT_FORMATS, None)
        plot = plot if plot is not None else self.plot_path
        if format is not None:
            check_format(format)
        for option, named in (("-o", path), ("--plot", plot)):
            if named is not None:
                outfiles.output_target(named, option)
        written: list[Path] = []
        for section in self.sections:
            formats = [format] if format else section.formats
            for index, one in enumerate(formats):
                # -f without -o prints, as for any report; the section's formats go to its files.
                target = Path(path) if path is not None else (None if format else section.default_path(one))
                if path is None and target is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                plot_file = plot or (section.default_plot if index == 0 else None)
                if plot_file is not None:
                    written.append(section.plot(plot_file))
                if target is None:
                    (echo or _stdout)(section, one)
                else:
                    _write_text(target, section.render(one))
                    written.append(target)
        return written

    def close(self) -> None:
        if self.source is not self.campaign._ledger:
            self.source.close()


def _stdout(section: Section, fmt: str) -> None:
    sys.stdout.write(section.render(fmt))
    sys.stdout.flush()


def _write_text(path: Path, text: str) -> None:
    outfiles.write_text(path, text)


def check_format(fmt: str) -> None:
    from corral.spec.reports import REPORT_FORMATS

    if fmt not in REPORT_FORMATS:
        raise CorralError(f"--format {fmt!r} is not one of {', '.join(REPORT_FORMATS)}")


def build(campaign: "Campaign", name: str | None = None, *, run_id: str | Sequence[str] | None = None,
          where: Sequence[str] | None = None, by: Sequence[str] | str | None = None, metric: str | None = None,
          stage: str | None = None, compare: bool | None = None, format: str | None = None,
          output: str | Path | None = None, plot: str | Path | None = None, top: int | None = None) -> Report:
    """The Report of ``corral report [NAME]`` with these options (see ``Campaign.report``)."""
    if format is not None:
        check_format(format)
    run_ids = [run_id] if isinstance(run_id, str) else list(run_id or [])
    where = list(where or [])
    by = [by] if isinstance(by, str) else list(by or [])
    named = campaign.spec.report
    if name is not None:
        if name not in named:
            raise SpecError(f"no report named {name!r}", file=str(campaign.loaded.path), key="report",
                            expected=("one of " + ", ".join(named)) if named else
                            "a report: section with named reports (see docs/reports.md)")
        chosen = {name: named[name]}
    elif named and not any((run_ids, where, by, metric, stage, format, output, plot, top, compare is not None)):
        chosen = dict(named)
    else:
        chosen = {}
    light = not where and not any(spec.runs for spec in chosen.values())
    report = Report(campaign, None, format=format, output=output, plot=plot)
    report.source, rows_of = _source(campaign, run_ids, light)
    try:
        if not chosen:
            report.sections.append(Section(report, rows_of(where), name=None, spec=None, by=by, metric=metric,
                                           stage=stage, compare=compare, top=top,
                                           from_where=bool(where) and not run_ids))
        for one, spec in chosen.items():
            report.sections.append(Section(
                report, rows_of(where + spec.runs), name=one, spec=spec, by=by or spec.by,
                metric=metric or spec.metric, stage=stage or spec.stage,
                compare=compare if compare is not None else spec.compare, top=top or spec.top,
                from_where=bool(where + spec.runs) and not run_ids))
    except BaseException:
        report.close()
        raise
    return report


def _source(campaign: "Campaign", run_ids: list[str], light: bool):
    """(the ledger to read, a function from ``where`` conditions to the run rows to report on)."""
    if light and not os.environ.get("CORRAL_REPORT_SQLALCHEMY"):
        from corral.ledger.location import sqlite_path
        from corral.ledger.sqlite_reader import SqliteReader

        reader = SqliteReader.open(sqlite_path(campaign.ledger_url))
        if reader is not None:
            rows = [reader.run(ref) for ref in run_ids] if run_ids else [reader.newest_run(campaign.spec.name)]
            if all(row is not None for row in rows):
                return reader, lambda where: rows
            reader.close()
    ledger = campaign.ledger(create=False)

    def rows_of(where: list[str]) -> list[dict[str, Any]]:
        if run_ids:
            return [campaign.run(r).row for r in run_ids]
        if where:
            found = campaign.registry().list(where=where)
            if not found:
                raise CorralError(f"no run matches {' and '.join(where)}")
            return [ledger.get_run(r["id"]) for r in found]
        return [campaign.run(None).row]

    return ledger, rows_of
