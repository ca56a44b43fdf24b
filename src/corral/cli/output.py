"""Printing: data to stdout (tables, JSON, CSV), messages and progress to stderr."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from typing import Any, Iterable

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


def write_records(records: Iterable[dict[str, Any]], fmt: str, handle) -> int:
    count = 0
    if fmt == "jsonl":
        for record in records:
            handle.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
            count += 1
    elif fmt == "json":
        handle.write("[")
        for record in records:
            handle.write(("," if count else "") + "\n" + json.dumps(record, default=str, ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    elif fmt == "csv":
        writer = None
        buffered: list[dict[str, Any]] = []
        columns: list[str] = []
        iterator = iter(records)
        # Columns are the union over a first window of records, then fixed (extra keys are dropped
        # only if they never appear in the window; the window is large enough for uniform results).
        for record in iterator:
            buffered.append(record)
            for key in record:
                if key not in columns:
                    columns.append(key)
            if len(buffered) >= 10000:
                break
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in buffered:
            writer.writerow(_flat(record))
            count += 1
        for record in iterator:
            writer.writerow(_flat(record))
            count += 1
    else:
        raise ValueError(fmt)
    return count


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v) for k, v in record.items()}


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    write_records(rows, "csv", buffer)
    return buffer.getvalue()
