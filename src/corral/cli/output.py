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


def slots_text(slots: dict[str, Any] | None) -> str:
    """A stage's slots for ``corral check``: ``4 workers``, ``2 workers, 1 GPU each``, ``cluster (<= 100 jobs)``."""
    if not slots:
        return "-"
    gpus = f", {slots['gpus_per_task']} GPU each" if slots.get("gpus_per_task") else ""
    if slots["slots"] is None:
        return f"cluster (<= {slots['limit']} {slots['unit']}{gpus})"
    unit = slots["unit"].removesuffix("es" if slots["unit"].endswith("ches") else "s") if slots["slots"] == 1 \
        else slots["unit"]
    return f"{slots['slots']} {unit}{gpus}"


def machine_lines(plan: dict[str, Any]) -> list[str]:
    """``corral check``'s GPUs per backend and secrets by name (set or missing, never their values)."""
    lines = []
    for backend, info in (plan.get("gpus") or {}).items():
        if info["gpus"] is None:
            lines.append(f"GPUs of {backend}: the cluster's")
        else:
            found = ", ".join(map(str, info["gpus"])) or "none"
            lines.append(f"GPUs of {backend}: {found} ({info['source']})")
    secrets = plan.get("secrets") or {}
    if secrets:
        lines.append("secrets: " + ", ".join(f"{name} {state}" for name, state in secrets.items()))
    return lines


def show_corral_warnings() -> None:
    """CorralWarnings as one ``warning: ...`` line on stderr each; other warnings as Python shows them."""
    import warnings

    from rich.text import Text

    from corral.errors import CorralWarning

    shown_by_python = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CorralWarning):
            err.print(Text.assemble(("warning: ", "bold yellow"), str(message)), highlight=False)
        else:
            shown_by_python(message, category, filename, lineno, file, line)

    warnings.showwarning = show
