"""Callable references (``package.module:function``), shared by the campaign schema and the worker
(which must stay light to start, so this module imports nothing heavy)."""

from __future__ import annotations

import re

CALLABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def single_callable(values: list[str] | None) -> str | None:
    """``skip_if``/``verify`` given as one callable reference (rather than paths): that reference."""
    if values and len(values) == 1 and CALLABLE_RE.match(values[0]):
        return values[0]
    return None
