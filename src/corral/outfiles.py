"""Files a user names for corral's output (``-o``, ``--plot``): regular files only.

corral often runs as root, where renaming a temporary file over ``/dev/null`` replaces the device
with a regular file. So a target must be a regular file or not exist yet, in a folder that exists
and can be written; a symbolic link is followed to the file it names. The content goes to a
temporary file beside the target, renamed over it at the end: a reader never sees half a file,
and the target keeps its mode.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from corral.errors import CorralError

VALID = "a regular file (created, or replaced if it exists) in a folder that exists and can be written"


class OutputFileError(CorralError):
    """An output file that corral will not write: not a regular file, or no place to put it."""

    def __init__(self, option: str, path: str | os.PathLike, reason: str):
        self.option, self.path, self.reason = option, str(path), reason
        super().__init__(f"{option} {self.path!r}: {reason}\n  expected: {VALID}")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def output_target(path: str | os.PathLike, option: str = "-o") -> Path:
    """The file that writing to ``path`` will replace or create (symbolic links followed), or
    ``OutputFileError`` saying why corral will not write there."""
    text = os.fspath(path)
    if not str(text).strip():
        raise OutputFileError(option, text, "names no file")
    if "\0" in str(text):
        raise OutputFileError(option, text, "holds a NUL character")
    given = Path(text).expanduser()
    if str(text).endswith(os.sep) or given.name in ("", ".", ".."):
        raise OutputFileError(option, text, "names a folder, not a file")
    try:
        target = Path(os.path.realpath(given))
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputFileError(option, text, _reason(exc)) from None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputFileError(option, text, f"is {_kind(mode)}")
    folder = target.parent
    if not folder.is_dir():
        raise OutputFileError(option, text, f"the folder {str(folder)!r} does not exist")
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    if len(os.fsencode(target.name)) > longest:
        raise OutputFileError(option, text, f"the file name is too long (this folder allows {longest} bytes)")
    if not os.access(folder, os.W_OK):
        raise OutputFileError(option, text, f"the folder {str(folder)!r} cannot be written")
    return target


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "the file name is too long"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return exc.strerror or str(exc)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def replacing(path: str | os.PathLike, option: str = "-o") -> Iterator[Path]:
    """A temporary path beside the target of ``path``: write it in the block; when the block ends
    without an error it replaces the target (which must still be a regular file, or absent)."""
    target = output_target(path, option)
    try:
        handle, name = tempfile.mkstemp(prefix=".corral-", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputFileError(option, path, f"cannot write in {str(target.parent)!r}: {_reason(exc)}") from None
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = _new_file_mode()
        output_target(target, option)  # still a regular file: nothing was put in its place meanwhile
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputFileError(option, path, f"cannot be written: {_reason(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def writing(path: str | os.PathLike, option: str = "-o", newline: str | None = None) -> Iterator[IO[str]]:
    """A text handle whose content replaces the target of ``path`` when the block ends."""
    with replacing(path, option) as tmp:
        with open(tmp, "w", newline=newline) as handle:
            yield handle


def write_text(path: str | os.PathLike, text: str, option: str = "-o") -> Path:
    """Replace (or create) the regular file ``path`` with ``text``; returns the file written."""
    target = output_target(path, option)
    with writing(path, option) as handle:
        handle.write(text)
    return target
