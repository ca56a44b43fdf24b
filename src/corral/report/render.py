"""Formats of one ``Report``: terminal table, JSON, Markdown, CSV, LaTeX (booktabs), HTML, PNG plot."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
from typing import Any

from corral.errors import CorralError
from corral.outfiles import output_target, replacing
from corral.report.aggregate import Report
from corral.report.stats import Stats

FORMATS = ("table", "json", "md", "csv", "latex", "html")

ALL = "(all)"


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def _interval(lo: Any, hi: Any) -> str:
    return "-" if lo is None or hi is None else f"[{fmt_num(lo)}, {fmt_num(hi)}]"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in errors.items()) or "-"


def _key_text(value: Any) -> str:
    return "-" if value is None else str(value)


def pivot_groups(report: Report) -> tuple[list[Any], list[tuple[list[Any], dict[Any, dict[str, Any]]]]]:
    """``--columns DIM``: (DIM's values, [(the other dimensions' values, {value: metrics})]) with a last
    row ``(all)`` per value, when there are other dimensions."""
    index = report.pivot
    values: list[Any] = []
    grouped: dict[tuple, dict[Any, Stats]] = {}
    totals: dict[Any, Stats] = {}
    for row in report.rows:
        value = row["key"][index]
        if value not in values:
            values.append(value)
        rest = tuple(v for i, v in enumerate(row["key"]) if i != index)
        grouped.setdefault(rest, {}).setdefault(value, Stats()).add(row["stats"]["all"])
        totals.setdefault(value, Stats()).add(row["stats"]["all"])
    numeric = report.numeric

    def metrics(cells: dict[Any, Stats]) -> dict[Any, dict[str, Any]]:
        return {v: cells.get(v, Stats()).metrics(report.metric, numeric) for v in values}

    out = [(list(rest), metrics(cells)) for rest, cells in grouped.items()]
    if len(report.dims) > 1:
        out.append(([ALL] + [""] * (len(report.dims) - 2), metrics(totals)))
    return values, out


def _pivot_table(report: Report) -> tuple[list[str], list[list[str]]]:
    names = [d.name for i, d in enumerate(report.dims) if i != report.pivot]
    values, groups = pivot_groups(report)
    what = "rate" if report.metric_kind == "bool" else "mean"
    header = list(names) or ["group"]
    for value in values:
        header += ([f"{_key_text(value)}", f"{_key_text(value)} 95% CI"] if report.metric_kind is not None
                   else [f"{_key_text(value)} done/expected"])
    rows = []
    for rest, cells in groups:
        line = [_key_text(v) if v != ALL else ALL for v in rest] or [ALL]
        for value in values:
            m = cells[value]
            if report.metric_kind is not None:
                number, lo, hi, _ = report.headline(m)
                line += [fmt_num(number), _interval(lo, hi)]
            else:
                line.append(f"{m['done']}/{m['expected']}")
        rows.append(line)
    if report.metric_kind is not None and header:
        header[0] = f"{header[0]} ({report.metric} {what})" if names else header[0]
    return header, rows


def has_total_row(report: Report) -> bool:
    """Whether the last row of ``display_table`` is the total ``(all)``."""
    return len(report.dims) > 1 if report.pivot is not None else bool(report.dims)


def display_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of strings (the last row is the total): what table, md, latex and html show."""
    if report.pivot is not None:
        return _pivot_table(report)
    dims = [d.name for d in report.dims]
    header = list(dims) or ["group"]
    body_rows: list[tuple[list[str], dict[str, Any]]] = []
    for row in report.rows:
        body_rows.append(([_key_text(v) for v in row["key"]] or [ALL], row["cells"]))
    if report.dims:
        body_rows.append(([ALL] + [""] * (len(dims) - 1), report.total))
    label = report.metric or ""
    if not report.compare:
        # Items the budget stopped get their own column (not failures), where there are any.
        stopped = bool(report.total["all"].get("budget"))
        header += ["expected", "done", "failed"] + (["budget"] if stopped else []) + ["running", "progress"]
        if report.metric_kind == "bool":
            header += [f"{label} rate", "95% CI"]
        for name in report.numeric:
            header += [f"{name} mean", f"{name} std", f"{name} ±95%"]
        header += ["errors"]
        rows = []
        for key, cells in body_rows:
            m = cells["all"]
            line = key + [str(m["expected"]), str(m["done"]), str(m["failed"])] + \
                ([str(m.get("budget", 0))] if stopped else []) + \
                [str(m["running"]), "-" if m["progress"] is None else f"{m['progress']:.1%}"]
            if report.metric_kind == "bool":
                s = m["success"]
                line += [fmt_num(s["rate"]), _interval(s["lo"], s["hi"])]
            for name in report.numeric:
                s = m["numeric"][name]
                line += [fmt_num(s["mean"]), fmt_num(s["std"]), fmt_num(s["ci"])]
            line.append(_errors(m["errors"]))
            rows.append(line)
        return header, rows
    for run in report.runs:
        if report.metric_kind is not None:
            header += [f"{run['label']}: {label}" + (" rate" if report.metric_kind == "bool" else " mean"),
                       f"{run['label']}: 95% CI"]
        header += [f"{run['label']}: done/expected"]
    rows = []
    for key, cells in body_rows:
        line = list(key)
        for run in report.runs:
            m = cells[run["id"]]
            if report.metric_kind is not None:
                value, lo, hi, _ = report.headline(m)
                line += [fmt_num(value), _interval(lo, hi)]
            line.append(f"{m['done']}/{m['expected']}")
        rows.append(line)
    return header, rows


def _summary_lines(report: Report) -> list[str]:
    lines = []
    what = f"{report.metric} rate" if report.metric_kind == "bool" else f"{report.metric} mean"
    if report.metric is not None and report.metric_chosen not in (None, "asked"):
        how = "the success field" if report.metric_chosen == "success" else "the first boolean result field"
        lines.append(f"metric: {report.metric} ({how}; --metric names another)")
    labels = {r["id"]: r["label"] for r in report.runs}
    columns = list(report.best.items()) if report.compare and report.best else (
        [("all", report.best)] if report.best else [])
    if report.top:  # the N best and worst below say it
        columns = []
    for column, best in columns:
        worst = report.worst[column] if report.compare else report.worst
        prefix = f"{labels.get(column, column)}: " if report.compare else ""
        lines.append(f"{prefix}best {_group_text(best['key'])} {what} {fmt_num(best['value'])}; "
                     f"worst {_group_text(worst['key'])} {fmt_num(worst['value'])}")
    if report.top:
        ranked = report.top.items() if report.compare else [("all", report.top)]
        for column, top in ranked:
            prefix = f"{labels.get(column, column)}: " if report.compare else ""
            for side in ("best", "worst"):
                groups = "; ".join(f"{_group_text(g['key'])} {fmt_num(g['value'])}" for g in top[side]) or "-"
                lines.append(f"{prefix}{side} {top['n']}: {groups}")
    if report.excluded_runs:
        into: dict[str, list[str]] = {}
        for run in report.excluded_runs:
            into.setdefault(run["merged_into"], []).append(run["id"])
        for target, sources in into.items():
            lines.append(f"left out {', '.join(sources)}: merged into {target}, counted there once")
    return lines


def _group_text(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())


def _title(report: Report) -> str:
    runs = ", ".join(r["id"] for r in report.runs)
    by = ", ".join(d.name for d in report.dims) or "nothing"
    return f"corral report: {runs} (stage {report.stage or 'all'}, by {by})"


# -- formats --------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    data = report.to_dict()
    if report.pivot is not None:
        values, groups = pivot_groups(report)
        names = [d.name for i, d in enumerate(report.dims) if i != report.pivot]
        data["pivot"] = {"columns": report.dims[report.pivot].name, "values": values,
                         "rows": [{"key": dict(zip(names, rest)), "cells": {_key_text(v): cells[v] for v in values}}
                                  for rest, cells in groups]}
    return json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n"


def _pivot_csv(report: Report) -> str:
    """``--columns DIM``: one row per group of the other dimensions, per DIM value its metric's n,
    value and interval, numbers unformatted."""
    names = [d.name for i, d in enumerate(report.dims) if i != report.pivot]
    values, groups = pivot_groups(report)
    what = "rate" if report.metric_kind == "bool" else "mean"
    columns = list(names)
    for value in values:
        prefix = f"{_key_text(value)}_{report.metric}" if report.metric_kind else _key_text(value)
        columns += ([f"{prefix}_n", f"{prefix}_{what}", f"{prefix}_lo", f"{prefix}_hi"] if report.metric_kind
                    else [f"{prefix}_done", f"{prefix}_expected"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for rest, cells in groups:
        if rest and rest[0] == ALL:
            continue  # the total, as the long CSV has none
        line: list[Any] = [("" if v is None else v) for v in rest]
        for value in values:
            if report.metric_kind:
                number, lo, hi, n = report.headline(cells[value])
                line += [n, csv_value(number), csv_value(lo), csv_value(hi)]
            else:
                line += [cells[value]["done"], cells[value]["expected"]]
        writer.writerow(line)
    return buffer.getvalue()


def to_csv(report: Report) -> str:
    """One row per group (and per run when runs are compared), numbers unformatted."""
    if report.pivot is not None:
        return _pivot_csv(report)
    dims = [d.name for d in report.dims]
    stopped = any(row["cells"][c].get("budget") for row in report.rows for c in report.columns_keys)
    columns = list(dims) + (["run"] if report.compare else []) + [
        "expected", "done", "failed", "running", "cancelled"] + (["budget"] if stopped else []) + ["progress"]
    if report.metric_kind == "bool":
        m = report.metric
        columns += [f"{m}_n", f"{m}_k", f"{m}_rate", f"{m}_lo", f"{m}_hi"]
    for name in report.numeric:
        columns += [f"{name}_n", f"{name}_mean", f"{name}_std", f"{name}_lo", f"{name}_hi"]
    columns.append("errors")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in report.rows:
        for column in report.columns_keys:
            m = row["cells"][column]
            line: list[Any] = [("" if v is None else v) for v in row["key"]]
            if report.compare:
                line.append(column)
            line += [m["expected"], m["done"], m["failed"], m["running"], m["cancelled"]] + \
                ([m.get("budget", 0)] if stopped else []) + [csv_value(m["progress"])]
            if report.metric_kind == "bool":
                s = m["success"]
                line += [s["n"], s["k"], csv_value(s["rate"]), csv_value(s["lo"]), csv_value(s["hi"])]
            for name in report.numeric:
                s = m["numeric"][name]
                line += [s["n"], csv_value(s["mean"]), csv_value(s["std"]), csv_value(s["lo"]), csv_value(s["hi"])]
            line.append(";".join(f"{k}:{v}" for k, v in m["errors"].items()))
            writer.writerow(line)
    return buffer.getvalue()


def csv_value(value: Any) -> Any:
    """A CSV cell: numbers to six decimals, and small ones (p-values) to six significant digits,
    so that 4.9e-08 is not written as 0.0."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.6g}"
        return repr(round(value, 6))
    return value


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    header, rows = display_table(report)
    lines = [f"**{_md_cell(_title(report))}**", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
    lines.append("|" + "|".join("---:" if _numeric_column(rows, i) else "---" for i in range(len(header))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    notes = _summary_lines(report)
    if notes:
        lines.append("")
        lines += [f"- {_md_cell(n)}" for n in notes]
    return "\n".join(lines) + "\n"


def _numeric_column(rows: list[list[str]], index: int) -> bool:
    values = [r[index] for r in rows if r[index] not in ("", "-", ALL)]
    if not values:
        return False
    for value in values:
        try:
            float(value.rstrip("%").split("/")[0].strip("[").split(",")[0])
        except ValueError:
            return False
    return True


_LATEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$")


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem;color:#222}
h1{font-size:1.2rem}table{border-collapse:collapse;font-size:.9rem}
th,td{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left}
th{border-bottom:2px solid #444}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{border-top:2px solid #444;font-weight:600}.meta{color:#666;font-size:.85rem}"""


def to_html(report: Report) -> str:
    """One static page: inline CSS, no scripts, no external assets."""
    header, rows = display_table(report)
    numeric = [_numeric_column(rows, i) for i in range(len(header))]
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{e(_title(report))}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{e(_title(report))}</h1>"]
    meta = [f"metric: {report.metric or '-'}", f"stage: {report.stage or 'all'}",
            "intervals: Wilson 95% (rates), mean ± 1.96·std/√n (numbers)"]
    parts.append(f'<p class="meta">{e(" · ".join(meta))}</p>')
    if len(report.runs) > 1:
        parts.append('<ul class="meta">' + "".join(
            f"<li>{e(r['label'])}: {e(r['id'])}</li>" for r in report.runs) + "</ul>")
    parts.append("<table>")
    parts.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>")
    parts.append("<tbody>")
    for index, row in enumerate(rows):
        total = has_total_row(report) and index == len(rows) - 1
        row_class = ' class="total"' if total else ""
        cells = "".join(("<td class=\"n\">" if numeric[i] else "<td>") + e(c) + "</td>" for i, c in enumerate(row))
        parts.append(f"<tr{row_class}>{cells}</tr>")
    parts.append("</tbody>")
    parts.append("</table>")
    notes = _summary_lines(report)
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts += [f'<p class="meta">generated by corral report, {e(stamp)}</p>', "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def rich_table(report: Report):
    from rich.table import Table

    header, rows = display_table(report)
    caption = "\n".join(_summary_lines(report)) or None
    table = Table(title=_title(report), caption=caption, header_style="bold", caption_justify="left")
    for index, name in enumerate(header):
        table.add_column(name, justify="right" if _numeric_column(rows, index) else "left")
    for index, row in enumerate(rows):
        table.add_row(*row, end_section=has_total_row(report) and index == len(rows) - 2)
    return table


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "md":
        return to_markdown(report)
    if fmt == "latex":
        from corral.report.latex import to_latex

        return to_latex(report)
    if fmt == "html":
        return to_html(report)
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=250, force_terminal=False, color_system=None)
        console.print(rich_table(report))
        return console.file.getvalue()
    raise CorralError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")


# -- plot -----------------------------------------------------------------------------------


def plot(report: Report, path, progress: dict[str, list[tuple[float, int]]] | None = None) -> None:
    """PNG: the metric by the first --by dimension with its 95% interval, and tasks done over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CorralError("--plot needs matplotlib: pip install 'corral[plot]'") from None
    output_target(path, "--plot")

    first = report.dims[0].name if report.dims else None
    merged: dict[Any, dict[str, Stats]] = {}
    for row in report.rows:
        key = row["key"][0] if report.dims else ALL
        for column, stats in row["stats"].items():
            merged.setdefault(key, {}).setdefault(column, Stats()).add(stats)
    keys = list(merged)
    columns = report.columns_keys
    labels = {r["id"]: r["label"] for r in report.runs}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(columns))
    plotted = False
    for c_index, column in enumerate(columns):
        values, err_lo, err_hi, xs = [], [], [], []
        for k_index, key in enumerate(keys):
            metrics = merged[key].get(column, Stats()).metrics(report.metric, report.numeric)
            value, lo, hi, _ = report.headline(metrics)
            if value is None:
                continue
            xs.append(k_index + (c_index - (len(columns) - 1) / 2) * width)
            values.append(value)
            err_lo.append(value - lo if lo is not None else 0)
            err_hi.append(hi - value if hi is not None else 0)
        if values:
            plotted = True
            ax1.bar(xs, values, width=width * 0.95, yerr=[err_lo, err_hi], capsize=3,
                    label=labels.get(column, column) if report.compare else None)
    ax1.set_xticks(range(len(keys)), [str(k) for k in keys], rotation=30 if len(keys) > 6 else 0, ha="right"
                   if len(keys) > 6 else "center")
    what = f"{report.metric} rate" if report.metric_kind == "bool" else f"mean {report.metric}"
    ax1.set_ylabel(what if report.metric_kind else "(no metric)")
    ax1.set_xlabel(first or "")
    ax1.set_title(f"{what} by {first or 'run'} (95% interval)" if plotted else "no metric to plot")
    if report.metric_kind == "bool":
        ax1.set_ylim(0, 1)
    if report.compare and plotted:
        ax1.legend(fontsize=8)
    spans = [s[-1][0] - s[0][0] for s in (progress or {}).values() if s]
    scale, unit = (1.0, "seconds") if max(spans, default=0) < 120 else (
        (60.0, "minutes") if max(spans) < 7200 else (3600.0, "hours"))
    for run in report.runs:
        series = (progress or {}).get(run["id"]) or []
        if not series:
            continue
        start = series[0][0]
        ax2.step([(t - start) / scale for t, _ in series], [n for _, n in series], where="post", label=run["label"])
    ax2.set_xlabel(f"{unit} since the first task finished")
    ax2.set_ylabel("tasks done (cumulative)")
    ax2.set_title(f"progress ({report.stage or 'all stages'})")
    if len(report.runs) > 1:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    try:
        with replacing(path, "--plot") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
