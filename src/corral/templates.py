"""Filling ``{field}`` templates of commands and paths with an item's values (shared by the worker,
which must stay light to start, and the checks).

Values are written as the campaign file writes them: YAML's ``true``, ``false`` and ``null``, not
Python's ``True``, ``False`` and ``None``, so ``--flag={use_cache}`` reads ``--flag=true``. A
format spec (``{x:03d}``) formats the value itself, as Python does.
"""

from __future__ import annotations

import string
from typing import Any, Mapping

_YAML_WORDS = {True: "true", False: "false"}


class _YamlScalars(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if not format_spec:
            if value is None:
                return "null"
            if isinstance(value, bool):
                return _YAML_WORDS[value]
        return super().format_field(value, format_spec)


_FORMATTER = _YamlScalars()


def fill(template: str, fields: Mapping[str, Any]) -> str:
    """``template.format_map(fields)``, with booleans and null as YAML writes them. Raises what
    ``format_map`` raises (KeyError, IndexError, ValueError) for a template it cannot fill."""
    return _FORMATTER.vformat(template, (), fields)
