"""Paths filled from templates with item values: they stay inside their root.

Item values come from data files nobody vets: ``{name}`` filled with ``../../etc/x`` must not
reach outside the campaign folder, whatever the template text looks like. So the check is on the
filled value, not on the template.
"""

from __future__ import annotations

import os
import stat
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


#: folders corral must never write into itself, nor into anything inside them
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/etc", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr")
#: folders that hold other people's folders: a campaign's files belong in one below them
SHARED_TOPS = ("/", "/home", "/root", "/tmp", "/var", "/opt", "/srv", "/mnt", "/media", "/run")


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def system_folder(path: Path) -> str | None:
    """The system folder ``path`` is, or is inside (symbolic links followed), or None."""
    real = os.path.realpath(path)
    for tree in SYSTEM_TREES:
        if real == tree or real.startswith(tree + "/"):
            return tree
    return real if real in SHARED_TOPS else None


def folder_problem(path: Path) -> str | None:
    """Why corral must not keep its files in the folder ``path`` (created if missing), or None."""
    system = system_folder(path)
    if system is not None:
        return f"is the system folder {system}" if system == os.path.realpath(path) else \
            f"is inside the system folder {system}"
    return _not_a_folder(path)


def file_problem(path: Path) -> str | None:
    """Why corral must not keep a database file at ``path`` (created if missing), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        return _not_a_folder(path) or exc.strerror or str(exc)
    if mode is not None and not stat.S_ISREG(mode):
        return "is " + file_kind(mode)
    system = system_folder(path.parent)
    if system in SYSTEM_TREES:
        return f"is inside the system folder {system}"
    return _not_a_folder(path) if mode is None else None


def _not_a_folder(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a folder: it, or the first of its parents that exists, is
    not one."""
    for above in [path, *path.parents]:
        try:
            mode = os.stat(above).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            return exc.strerror or str(exc)
        if stat.S_ISDIR(mode):
            return None
        return "is " + file_kind(mode) if above == path else f"is below {str(above)!r}, which is {file_kind(mode)}"
    return None
