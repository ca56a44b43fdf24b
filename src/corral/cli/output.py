"""Printing: data to stdout (tables, JSON, CSV), messages and progress to stderr."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
# Piped output is not cut to 80 columns.
if not out.is_terminal:
    out.width = 250
if not err.is_terminal:
    err.width = 250


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> Table:
    result = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        numeric = rows and all(isinstance(r.get(column), (int, float)) or r.get(column) is None for r in rows)
        result.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        result.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    return result


def error_lines(errors: list[dict[str, Any]]) -> list[str]:
    """One line per stage and end state: the most common cause of its failed (or cancelled) tasks."""
    lines = []
    for e in errors:
        message = " ".join((e.get("message") or "").split())
        if len(message) > 200:
            message = message[:197] + "..."
        cause = e.get("error_class") or "no error class"
        message = message.removeprefix(f"{cause}: ")
        if e["count"] == e["tasks"]:
            text = f"{e['stage']}: {e['tasks']} {e['state']}, {cause}"
        else:
            text = f"{e['stage']}: {e['tasks']} {e['state']}, most often {cause} ({e['count']} of {e['tasks']})"
        if message:
            text += f": {message}"
        if e.get("task"):
            text += f" (corral logs {e['task']})"
        lines.append(text)
    return lines
