"""The format of an output file: the one named (``--format``), else the one its suffix names
(``-o table.tex`` is LaTeX), else the command's default. Choosing a format writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

#: File suffix -> format name, for every command that writes a file with ``-o``.
SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".md": "md", ".markdown": "md",
                  ".csv": "csv", ".tex": "latex", ".latex": "latex", ".html": "html", ".htm": "html",
                  ".txt": "table", ".parquet": "parquet"}


def format_from_suffix(path: Any) -> str | None:
    """The format a file name's suffix names (None: no suffix, or one no format has)."""
    if not isinstance(path, (str, Path)):
        return None
    return SUFFIX_FORMATS.get(Path(path).suffix.lower())


def output_format(explicit: str | None, path: Any, allowed: Sequence[str], default: str | None) -> str | None:
    """The format to write ``path`` in: ``explicit`` when given; else the suffix's format when the
    command has it; else ``default``."""
    if explicit:
        return explicit
    by_suffix = format_from_suffix(path)
    return by_suffix if by_suffix in allowed else default
