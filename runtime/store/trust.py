"""Whose cache it is: executable content is loaded only from folders no one else can write.

NOTE: [the cache is trusted like ssh trusts its keys]
A cache entry holds code this process runs (the emitted source, Inductor's
compiled pieces).  Hashes catch corruption, but whoever can write the folder
can write matching hashes, too.  So, as ssh does with ``~/.ssh``, every folder
from the cache root down and every file loaded must be owned by this user (or
root) and writable by no one else; otherwise nothing is loaded and the error
says how to fix the permissions.  docs/cache.md describes the whole model.
"""

from __future__ import annotations

import os
import stat

from stitch.core.errors import StitchError


class StitchCacheTrustError(StitchError):
    """A cache folder or file could have been written by another user; nothing was loaded."""


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def trust_problem(path: str, root: str) -> str | None:
    """Why ``path`` alone may not be trusted (owner, mode), or None."""
    if not hasattr(os, "geteuid"):
        return None  # NOTE: Windows guards files with ACLs, not modes; not checked.
    try:
        st = os.stat(path)
    except OSError:
        return None
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        return (
            f"{path} is owned by {_owner_name(st.st_uid)}, not by you "
            f"({_owner_name(me)}). Whoever owns it can make this process run their "
            "code. Fix: use a cache folder of your own (CompilationConfig.cache_dir "
            f"or $STITCH_CACHE_DIR), or remove {root} if it should be yours."
        )
    loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if loose:
        who = " and ".join(
            name
            for bit, name in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "all users"))
            if loose & bit
        )
        return (
            f"{path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}). "
            "Anyone who can write it can make this process run their code. Fix: "
            f"chmod -R go-w {root}  (or use a cache folder only you can write)."
        )
    return None


def check_trusted(path: str, root: str) -> None:
    """Raise :class:`StitchCacheTrustError` unless ``path`` may be loaded from.

    Checks ``root``, every folder between it and ``path``, and ``path`` itself.
    What does not exist yet is not checked (nothing can be loaded from it).
    """
    path, root = os.path.abspath(path), os.path.abspath(root)
    relative = os.path.relpath(path, root)
    chain = [root]
    if relative != "." and not relative.startswith(".."):
        for part in relative.split(os.sep):
            chain.append(os.path.join(chain[-1], part))
    for current in chain:
        problem = trust_problem(current, root)
        if problem is not None:
            raise StitchCacheTrustError("refusing to use the Stitch cache: " + problem)
