"""Helpers for the cache's fault tests: a file system that refuses writes, and tree snapshots.

Tests may run as root (as in CI containers), where ``chmod`` does not stop a
write; so a read-only or full location is simulated by patching the calls that
write (``io.open`` for writing, ``os.open`` with a write flag, ``os.mkdir``,
renames, ...) for paths under one folder, and nowhere else: Inductor's own
cache and pytest's files are written as usual.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _path_of(target: Any) -> str | None:
    if isinstance(target, int):  # an fd, as os.fdopen passes to io.open
        try:
            return os.readlink(f"/proc/self/fd/{target}")
        except OSError:
            return None
    try:
        return os.path.abspath(os.fsdecode(target))
    except TypeError:
        return None


class _FullFile:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, f: Any, name: str) -> None:
        self._f = f
        self._name = name

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextmanager
def failing_writes(folder: Path, error: int, *, after: int = 0) -> Iterator[list[str]]:
    """Writes under ``folder`` fail with ``error`` (EROFS or ENOSPC).

    EROFS refuses every change (creating, renaming, removing); ENOSPC lets
    files and folders be created but fails every write of data after the
    first ``after`` files were written.  Yields the paths that were refused.
    """
    root = os.path.abspath(folder)
    refused: list[str] = []
    written: list[str] = []
    real_open, real_os_open = io.open, os.open

    def under(target: Any) -> str | None:
        path = _path_of(target)
        if path is not None and (path == root or path.startswith(root + os.sep)):
            return path
        return None

    def refuse(path: str) -> OSError:
        refused.append(path)
        return OSError(error, os.strerror(error), path)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        path = under(file)
        if path is None or not any(c in mode for c in "wax+"):
            return real_open(file, mode, *args, **kwargs)
        if error == errno.EROFS:
            raise refuse(path)
        f = real_open(file, mode, *args, **kwargs)
        if len(written) < after:
            written.append(path)
            return f
        refused.append(path)
        return _FullFile(f, path)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if error == errno.EROFS and flags & _WRITE_FLAGS and under(path):
            raise refuse(under(path) or "")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded(name: str) -> None:
        real = getattr(os, name)

        def call(first: Any, *args: Any, **kwargs: Any) -> Any:
            if error == errno.EROFS and under(first):
                raise refuse(under(first) or "")
            return real(first, *args, **kwargs)

        monkeypatch.setattr(os, name, call)

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name in ("mkdir", "rename", "replace", "link", "unlink", "rmdir", "chmod"):
        guarded(name)
    try:
        yield refused
    finally:
        monkeypatch.undo()


def tree_state(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path under ``folder`` with its inode, size, mtime and mode."""
    state = {}
    for path in sorted([folder, *folder.rglob("*")]):
        st = path.lstat()
        state[str(path.relative_to(folder))] = (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_mode,
        )
    return state
