"""Durations and sizes written the way people write them: ``90``, ``30s``, ``10m``, ``2h``, ``1d``, and
SLURM's time limits (``72:00:00``, ``1-12:00:00``, ``2-0``)."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$")
#: SLURM's ``--time`` forms: ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``
_SLURM_TIME = re.compile(r"^\s*(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+):(\d+)(?::(\d+))?)\s*$")
#: what a duration is, for messages
DURATION_FORMS = ("seconds (90), a number with a unit (30s, 10m, 1.5h, 2d; units ms, s, sec, m, min, h, d) "
                  "or a SLURM time (30:00, 72:00:00, 1-12:00:00, 2-0)")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2,
               "g": 1024**3, "gb": 1024**3, "t": 1024**4, "tb": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?b?)\s*$", re.IGNORECASE)


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``30``, ``"30s"``, ``"10m"``, ``"1.5h"``, ``"2d"`` or a SLURM time (``"72:00:00"``,
    ``"1-12:00:00"``, ``"2-0"``); raises ValueError otherwise.

    A bare number is seconds, as everywhere in corral (sbatch reads ``--time=30`` as minutes).
    """
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration must not be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if match:
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    slurm = _SLURM_TIME.match(str(value))
    if slurm:
        return _slurm_seconds(slurm)
    raise ValueError(f"{value!r} is not a duration: write {DURATION_FORMS}")


def _slurm_seconds(match: re.Match) -> float:
    days, day_hours, day_minutes, day_seconds, first, second, third = match.groups()
    if days is not None:
        return float(int(days) * 86400 + int(day_hours) * 3600 + int(day_minutes or 0) * 60 + int(day_seconds or 0))
    if third is None:  # MM:SS
        return float(int(first) * 60 + int(second))
    return float(int(first) * 3600 + int(second) * 60 + int(third))


def parse_size(value: str | int) -> int:
    """Bytes from ``1024``, ``"512M"``, ``"4G"``."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size like '512M' or '4G'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
