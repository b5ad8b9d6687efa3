"""Checks of the paths a command reads and writes, made before any work starts.

An input must be a readable regular file or directory: a FIFO or device would block or never end, so it is
refused up front, and a path that cannot be opened says why (missing, dangling symlink, symlink loop, permission
denied). An output must be writable where it goes, must not be an input, and must not be two outputs at once,
so that a long run never fails at its very end because of its `--out`.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable

from itd.core.errors import InputError

__all__ = ["check_input", "check_outputs"]

_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _why_unreadable(path: Path, exc: OSError) -> str:
    """What an `OSError` from stat() or open() of `path` means to a user."""
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "no such file or directory (a part of the path is not a directory)"
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            return f"dangling symlink (its target {os.readlink(path)!r} does not exist)"
        return "no such file or directory"
    return f"cannot read: {exc.strerror or exc}"


def _kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is ("a named pipe (FIFO)", ...); None for a file or directory."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")


def check_input(path: str | os.PathLike, *, allow_dir: bool = True) -> os.stat_result:
    """`os.stat` of an input that can be read: a readable regular file, or (with `allow_dir`) a directory.

    Raises `InputError` naming the path and the reason: no such file, dangling symlink, symlink loop,
    permission denied, "not a regular file" (a FIFO, device or socket, which would block or never end)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(_why_unreadable(path, exc), path=str(path)) from None
    if stat.S_ISDIR(st.st_mode):
        if not allow_dir:
            raise InputError("is a directory, not a file", path=str(path))
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError("permission denied (cannot list the directory)", path=str(path))
        return st
    kind = _kind(st.st_mode)
    if kind is not None:
        raise InputError(f"not a regular file: it is {kind}; give a file or a directory", path=str(path))
    if not os.access(path, os.R_OK):
        raise InputError("permission denied", path=str(path))
    return st


def _same_path(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name the same file: the same inode when both exist, else the same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop: checked and reported elsewhere
        return False


def _probe_writable(directory: Path, label: str, output: Path) -> None:
    """Create and remove a temporary file in `directory`, the only test of writability that also holds for
    root, read-only mounts and pseudo file systems such as /proc."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".itd-write-check-", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {label} here: {directory} is not writable ({exc.strerror or exc})",
                         path=str(output)) from None
    os.close(fd)
    os.unlink(probe)


def _check_output(path: Path, directory: bool, label: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None  # absent, or a dangling symlink that the output replaces
    except OSError as exc:
        if exc.errno != errno.ENOTDIR:
            raise InputError(f"cannot write {label} here: {_why_unreadable(path, exc)}", path=str(path)) from None
        st = None  # a parent is a file: reported below with its name
    if st is not None:
        if directory and not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{label} must be a directory, but this exists and is not one", path=str(path))
        if not directory and stat.S_ISDIR(st.st_mode):
            raise InputError(f"{label} must be a file, but this is a directory", path=str(path))
        kind = _kind(st.st_mode)
        if kind is not None:
            raise InputError(f"{label} must be a regular file, but this is {kind}", path=str(path))
        _probe_writable(path if directory else path.absolute().parent, label, path)
        return
    if directory and os.path.islink(path):  # a directory cannot be made where a dangling symlink is
        raise InputError(f"cannot write {label} here: {_why_unreadable(path, FileNotFoundError(errno.ENOENT, ''))}",
                         path=str(path))
    # absent: the nearest existing ancestor must be a writable directory (the missing ones are created)
    ancestor = path.absolute().parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot write {label} here: {ancestor} is not a directory", path=str(path))
    _probe_writable(ancestor, label, path)


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike | None, bool]],
                  inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work, outputs that could not be written at the end.

    `outputs` are `(label, path, is_directory)` (label: the option, e.g. "--out"; a None path is skipped).
    Each must be creatable (its nearest existing parent a writable directory), a directory where one is
    expected and a regular file otherwise, not the same file as any of `inputs` (symlinks and hard links
    included), and not the same path as another output. Raises `InputError` (exit code 2)."""
    from itd.core.urls import is_url

    given = [(label, Path(p), is_dir) for label, p, is_dir in outputs if p is not None and str(p) != ""]
    existing_inputs = [Path(p) for p in inputs if p is not None and not is_url(p) and os.path.lexists(p)]
    for i, (label, path, is_dir) in enumerate(given):
        _check_output(path, is_dir, label)
        for source in existing_inputs:
            if _same_path(path, source):
                raise InputError(f"{label} is an input of this command ({source}); writing it would destroy the "
                                 "input: choose another path", path=str(path))
        for other_label, other, _ in given[:i]:
            if _same_path(path, other):
                raise InputError(f"{label} and {other_label} are the same path; give them different paths",
                                 path=str(path))
