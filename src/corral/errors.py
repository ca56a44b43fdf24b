"""Errors a user can act on. The CLI prints them without a traceback and exits with ``exit_code``."""

from __future__ import annotations


class CorralError(Exception):
    """An error caused by input or state the user controls."""

    exit_code = 2


class SpecError(CorralError):
    """A campaign file, override or item source that cannot be used as written."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 expected: str | None = None, suggestion: str | None = None):
        self.file, self.key, self.expected, self.suggestion = file, key, expected, suggestion
        self.detail = message
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}"
        if self.key:
            where = f"{where}: {self.key}" if where else self.key
        text = f"{where}: {self.detail}" if where else self.detail
        if self.expected:
            text += f"\n  expected: {self.expected}"
        if self.suggestion:
            text += f"\n  did you mean: {self.suggestion}"
        return text


class LedgerError(CorralError):
    """The ledger cannot be opened or does not hold what was asked for."""


class NotFound(CorralError):
    """A run, task or submission named by the user does not exist."""


class CorralWarning(UserWarning):
    """Something that works but is likely a mistake; the CLI prints it on stderr as ``warning: ...``."""


class ConfigsDiffer(CorralError):
    """Runs to merge did different work: their configurations differ (``differences``: the keys,
    with each run's value)."""

    def __init__(self, differences: list, message: str):
        self.differences = differences
        super().__init__(message)
