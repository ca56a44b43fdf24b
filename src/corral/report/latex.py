"""LaTeX of a report: a booktabs tabular, the best value per column (or per row, where runs or
``--columns`` values are the columns) in bold, in a ``table`` environment with a caption and a label."""

from __future__ import annotations

from corral.report.aggregate import Report
from corral.report.render import _numeric_column, _title, display_table, has_total_row, latex_escape


def _float_cell(text: str) -> float | None:
    try:
        return float(text.rstrip("%"))
    except ValueError:
        return None


def best_cells(report: Report, header: list[str], rows: list[list[str]]) -> set[tuple[int, int]]:
    """(row, column) of the best values, bolded in LaTeX: per column among the groups (the total row
    left out) for the metric's rate or mean and every numeric mean; per row among the compared values
    when runs or ``--columns`` values are the columns. Ties are all best."""
    body = range(len(rows) - 1 if has_total_row(report) else len(rows))
    lower = set(report.lower_is_better)

    def best_of(cells: list[tuple[int, int]], metric: str | None) -> set[tuple[int, int]]:
        scored = [(cell, _float_cell(rows[cell[0]][cell[1]])) for cell in cells]
        scored = [(cell, value) for cell, value in scored if value is not None]
        if not scored:
            return set()
        pick = min if metric in lower else max
        target = pick(value for _, value in scored)
        return {cell for cell, value in scored if value == target}

    chosen: set[tuple[int, int]] = set()
    if report.pivot is not None or report.compare:
        if report.metric_kind is None:
            return chosen
        if report.pivot is not None:
            first = len(report.dims) - 1 or 1
            value_columns = list(range(first, len(header), 2))
        else:
            value_columns = [i for i, name in enumerate(header) if name.endswith((" rate", " mean"))]
        for r in body:
            chosen |= best_of([(r, c) for c in value_columns], report.metric)
        return chosen
    targets: list[tuple[int, str | None]] = []
    for index, name in enumerate(header):
        if report.metric_kind == "bool" and name == f"{report.metric} rate":
            targets.append((index, report.metric))
        for field in report.numeric:
            if name == f"{field} mean":
                targets.append((index, field))
    for column, metric in targets:
        chosen |= best_of([(r, column) for r in body], metric)
    return chosen


def latex_float(tabular: str, caption: str | None, label: str | None, comment: str | None = None) -> str:
    """``tabular`` in a ``table`` environment (centred, the caption above) when a caption or label is
    given; the caption and label are LaTeX as written."""
    lines = [f"% {latex_escape(comment)}"] if comment else []
    if caption is None and label is None:
        return "\n".join(lines + [tabular.rstrip("\n")]) + "\n"
    lines += [r"\begin{table}[t]", r"\centering"]
    if caption is not None:
        lines.append(r"\caption{" + caption + "}")
    if label is not None:
        lines.append(r"\label{" + label + "}")
    lines += [tabular.rstrip("\n"), r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_latex(report: Report) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); the total row after a \\midrule; the best value
    per column in bold; in a ``table`` environment when the report has a caption or label."""
    header, rows = display_table(report)
    bold = best_cells(report, header, rows)
    spec = "".join("r" if _numeric_column(rows, i) else "l" for i in range(len(header)))

    def line(r: int, row: list[str]) -> str:
        return " & ".join(r"\textbf{" + latex_escape(c) + "}" if (r, i) in bold else latex_escape(c)
                          for i, c in enumerate(row)) + r" \\"

    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    total = has_total_row(report)
    body = rows[:-1] if total else rows
    for index, row in enumerate(body):
        lines.append(line(index, row))
    if total:
        lines.append(r"\midrule")
        lines.append(line(len(rows) - 1, rows[-1]))
    lines += [r"\bottomrule", r"\end{tabular}"]
    return latex_float("\n".join(lines) + "\n", report.caption, report.label, comment=_title(report))
