"""Paths filled from templates with item values: they stay inside their root.

Item values come from data files nobody vets: ``{name}`` filled with ``../../etc/x`` must not
reach outside the campaign folder, whatever the template text looks like. So the check is on the
filled value, not on the template.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from corral.errors import CorralError

#: the longest file name (one path part) the usual file systems hold, in bytes
NAME_MAX = 255


class TemplatePathError(CorralError):
    """A path filled from a template that would leave its root or cannot name a file."""

    def __init__(self, key: str, value: str, reason: str, item: str | None = None):
        self.key, self.value, self.reason, self.item = key, value, reason, item
        shown = value if len(value) <= 120 else value[:117] + "..."
        of_item = f" for item {item}" if item else ""
        super().__init__(f"{key}: the path {shown!r} filled{of_item} {reason}; "
                         f"it must be a relative path inside the campaign folder")


def inside(root: Path, relative: str, *, key: str, item: str | None = None) -> Path:
    """``root / relative`` where ``relative`` (a filled template) names a file inside ``root``: no
    ``..``, no absolute path, no NUL or control character, no part longer than NAME_MAX bytes."""
    if not relative.strip():
        raise TemplatePathError(key, relative, "is empty", item)
    if any(ord(c) < 32 or ord(c) == 127 for c in relative):
        raise TemplatePathError(key, relative, "holds a control character", item)
    path = PurePosixPath(relative)
    if path.is_absolute():
        raise TemplatePathError(key, relative, "is an absolute path", item)
    if ".." in path.parts:
        raise TemplatePathError(key, relative, "goes up a folder with '..'", item)
    if any(len(os.fsencode(part)) > NAME_MAX for part in path.parts):
        raise TemplatePathError(key, relative, f"has a file name longer than {NAME_MAX} bytes", item)
    return Path(root) / path
