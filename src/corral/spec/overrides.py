"""Checks of ``key=value`` overrides that Hydra's grammar accepts but corral cannot apply."""

from __future__ import annotations

import re
from pathlib import Path

from corral.errors import SpecError

_SEGMENT = re.compile(r"^[A-Za-z_][\w-]*$")
#: a key longer than this is a mistake (Hydra would look for a config-group folder of that name)
MAX_KEY_LENGTH = 200
EXPECTED = ("key=value (existing key), +key=value (new key), ~key (remove), group=option, "
            "with keys such as stages.train.timeout")


def check_overrides(overrides: list[str], file: Path) -> None:
    """Refuse overrides without a key, with a package (``group@package``), naming list elements or
    with keys that are not dotted names, before Hydra sees them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue  # a grammar error: composing says what it is
        key = override.key_or_group or ""
        if override.package is not None:
            raise SpecError(f"the override {text!r} names a package ({key}@{override.package}); corral "
                            "composes every group at its own place", key=key or None, file=str(file),
                            expected=EXPECTED)
        if not key:
            raise SpecError(f"the override {_short(text)!r} has no key", file=str(file), expected=EXPECTED)
        if len(key) > MAX_KEY_LENGTH:
            raise SpecError(f"the override key {_short(key)!r} is {len(key):,} characters long", file=str(file),
                            expected=EXPECTED)
        segments = key.split(".")
        for segment in segments:
            if segment.isdigit():
                raise SpecError(f"the override {_short(text)!r} names a list element; set the whole list "
                                f"instead, e.g. {'.'.join(segments[:segments.index(segment)])}=[a,b]",
                                key=key, file=str(file), expected=EXPECTED)
            if not _SEGMENT.match(segment):
                raise SpecError(f"the override key {_short(key)!r} is not a dotted name", key=None, file=str(file),
                                expected=EXPECTED)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
