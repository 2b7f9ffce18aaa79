"""Files in the cache and the debug dump: private folders, durable atomic writes.

Hashes are ``digests.py``'s."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator

from filelock import FileLock

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def fsync_dir(directory: str) -> None:
    """Make a rename or a new file in ``directory`` durable (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fsync_file(directory)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: str, root: str) -> None:
    """Create ``root`` and the folders from it down to ``path``, each 0700.

    Folders above ``root`` are created with the default mode; ``root`` is the
    cache root, which no one else may write (see docs/cache.md).
    """
    path, root = os.path.abspath(path), os.path.abspath(root)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    relative = os.path.relpath(path, root)
    current = root
    for part in ["", *([] if relative == "." else relative.split(os.sep))]:
        current = os.path.join(current, part) if part else current
        try:
            os.mkdir(current, PRIVATE_DIR)
        except FileExistsError:
            if not os.path.isdir(current):
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), current
                ) from None
            continue
        # mkdir's mode is masked by the umask; the cache's folders are 0700 exactly.
        os.chmod(current, PRIVATE_DIR)


def atomic_write(path: str, data: bytes) -> None:
    """Write via a private temporary file in the same folder, fsync, ``os.replace``.

    The file ends up 0600 and the rename is fsync'd too: after a crash the path
    holds either the old content or all of the new.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


@contextlib.contextmanager
def locked(lock_path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created 0600) inside the block.

    Serializes writers of one cache entry between processes: ``filelock``'s
    ``flock`` on POSIX (the file stays; releasing never deletes it), its soft
    lock where there is no ``fcntl``.
    """
    with FileLock(lock_path, mode=PRIVATE_FILE):
        yield


def remove_tree(path: str) -> None:
    """Remove a folder with its content, or a file (what is not there is fine)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
