"""``--format`` and ``-o`` for every command that prints a table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from corral import outfiles
from corral.errors import CorralError

FORMAT_NAMES = ("table", "json", "md", "csv", "latex", "html")
FORMAT = typer.Option(None, "--format", "-f", help="table | json | md | csv | latex | html (default: from the "
                                                   "-o file's suffix, else table)")
OUTPUT = typer.Option(None, "--output", "-o", help="Write here instead of stdout (.json, .md, .csv, .tex, .html "
                                                  "name the format).")


def chosen_format(fmt: Optional[str], as_json: bool = False, out_file: Optional[Path] = None) -> str:
    """--format when given (or --json), else the format ``out_file``'s suffix names, else a table."""
    from corral.spec.formats import output_format

    fmt = output_format(fmt or ("json" if as_json else None), out_file, FORMAT_NAMES, "table")
    if fmt not in FORMAT_NAMES:
        raise CorralError(f"--format {fmt!r} is not one of {', '.join(FORMAT_NAMES)}")
    return fmt


def write_text(text: str, out_file: Optional[Path]) -> None:
    """To stdout, or atomically to ``out_file``."""
    if out_file is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from corral.cli.output import err

    outfiles.write_text(out_file, text)
    err.print(f"wrote {out_file}", highlight=False)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, out_file: Optional[Path] = None,
         title: str | None = None, data: Any = None) -> None:
    """Rows as a table on the terminal, or in ``fmt`` to stdout or a file."""
    if fmt == "table" and out_file is None:
        from corral.cli.output import out
        from corral.report.tables import rich_rows

        out.print(rich_rows(rows, columns, title))
        return
    from corral.report.tables import render_rows

    write_text(render_rows(rows, columns, fmt, title=title, data=data), out_file)
