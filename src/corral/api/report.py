"""``corral report`` from Python: ``campaign.report(by=["setting"]).render("md")``.

A Report holds one table per section: the campaign's named reports (its ``report:`` section), or
the one table asked for. A SQLite ledger at this corral's schema version is read with the standard
library (importing SQLAlchemy costs more than most reports take to compute); everything else
(PostgreSQL, an older schema, ``where``, run ids that are only prefixes) through the Ledger.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from corral import outfiles
from corral.errors import CorralError, SpecError

if TYPE_CHECKING:
    from corral.api.campaign import Campaign
    from corral.spec.reports import NamedReport

#: what a table prints when it goes to no file: ``echo(section, format)``
Echo = Callable[["Section", str], None]


@dataclass
class Layout:
    """How a section's table is laid out (``corral report`` options of the same names)."""

    #: compare this dimension's values on the units they share (a paired comparison, not a grouped table)
    paired_by: str | None = None
    #: the item parameters that make a unit (default: every item parameter but ``paired_by``)
    pair_on: Sequence[str] = ()
    #: the value the others are compared with (default: the first in sort order)
    baseline: str | None = None
    #: the paired test of numbers: ``t`` (default) or ``wilcoxon``
    paired_test: str | None = None
    #: this dimension's values as the columns
    columns: str | None = None
    #: result fields where lower is better (the best value, bold in LaTeX, is the lowest)
    lower_is_better: Sequence[str] = ()
    caption: str | None = None
    label: str | None = None

    @property
    def given(self) -> bool:
        return any((self.paired_by, self.pair_on, self.baseline, self.paired_test, self.columns, self.lower_is_better,
                    self.caption, self.label))

    def over(self, spec: "NamedReport") -> "Layout":
        """These options, each one not given taken from a named report."""
        return Layout(paired_by=self.paired_by or spec.paired_by, pair_on=self.pair_on or spec.pair_on,
                      baseline=self.baseline if self.baseline is not None else spec.baseline,
                      paired_test=self.paired_test or spec.paired_test,
                      columns=self.columns or spec.columns,
                      lower_is_better=self.lower_is_better or spec.lower_is_better,
                      caption=self.caption if self.caption is not None else spec.caption,
                      label=self.label if self.label is not None else spec.label)


class Section:
    """One table: a named report of the campaign, or the one asked for (``name`` None)."""

    def __init__(self, report: "Report", rows: list[dict[str, Any]], *, name: str | None,
                 spec: "NamedReport | None", by: Sequence[str], metric: str | None, stage: str | None,
                 compare: bool | None, top: int | None = None, from_where: bool = False,
                 layout: "Layout | None" = None):
        self.report, self.rows, self.name, self.spec = report, rows, name, spec
        self.by = [part for value in by for part in value.split(",")]
        self.metric, self.stage, self.compare, self.top = metric, stage, compare, top
        self.layout = layout or Layout()
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
            from corral.report.paired import compare_paired

            layout = self.layout
            try:
                if layout.paired_by is not None:
                    self._table = compare_paired(self.report.source, self.rows, layout.paired_by,
                                                 pair_on=layout.pair_on, baseline=layout.baseline,
                                                 metric=self.metric, stage=self.stage, test=layout.paired_test)
                else:
                    self._table = aggregate(self.report.source, self.rows, by=self.by, metric=self.metric,
                                            stage=self.stage, compare=self.compare, top=self.top,
                                            leave_out_merged=True if self.from_where else None,
                                            columns=layout.columns, lower_is_better=layout.lower_is_better)
            except CorralError as exc:
                raise self._wrapped(exc) from None
            self._table.caption, self._table.label = layout.caption, layout.label
        return self._table

    @property
    def paired(self) -> bool:
        """Whether the table is a paired comparison (``paired_by``)."""
        return self.layout.paired_by is not None

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
        from corral.report.paired import render_paired

        try:
            return render_paired(self.table, fmt) if self.paired else render(self.table, fmt)
        except CorralError as exc:
            raise self._wrapped(exc) from None

    def plot(self, path: str | Path) -> Path:
        """A PNG: the metric by the first dimension, and tasks done over time (``corral[plot]``)."""
        from corral.report import plot, progress_over_time

        if self.paired:
            raise self._wrapped(CorralError("--plot draws a grouped report; a paired comparison has no plot "
                                            "(leave out --plot or --paired-by)"))
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
          output: str | Path | None = None, plot: str | Path | None = None, top: int | None = None,
          paired_by: str | None = None, pair_on: Sequence[str] | str | None = None, baseline: Any = None,
          paired_test: str | None = None, columns: str | None = None,
          lower_is_better: Sequence[str] | str | None = None, caption: str | None = None,
          label: str | None = None) -> Report:
    """The Report of ``corral report [NAME]`` with these options (see ``Campaign.report``)."""
    layout = Layout(paired_by=paired_by, pair_on=_names(pair_on),
                    baseline=None if baseline is None else str(baseline), paired_test=paired_test, columns=columns,
                    lower_is_better=_names(lower_is_better), caption=caption, label=label)
    if format is not None:
        check_format(format)
    if paired_test is not None:
        from corral.report.paired import numeric_test

        numeric_test(paired_test)
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
    elif named and not any((run_ids, where, by, metric, stage, format, output, plot, top, compare is not None,
                            layout.given)):
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
                                           from_where=bool(where) and not run_ids, layout=layout))
        for one, spec in chosen.items():
            report.sections.append(Section(
                report, rows_of(where + spec.runs), name=one, spec=spec, by=by or spec.by,
                metric=metric or spec.metric, stage=stage or spec.stage,
                compare=compare if compare is not None else spec.compare, top=top or spec.top,
                from_where=bool(where + spec.runs) and not run_ids, layout=layout.over(spec)))
    except BaseException:
        report.close()
        raise
    return report


def _names(value: Sequence[str] | str | None) -> list[str]:
    """Names given as a list, a comma-separated string, or repeated options with commas."""
    parts = [value] if isinstance(value, str) else list(value or [])
    return [name.strip() for part in parts for name in part.split(",") if name.strip()]


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
