"""``load_failures.py``: why warm loads of an entry failed, for ``stitch cache explain``.

NOTE: [a warm load that fails compiles instead] (``pipeline/warm_load.py``)
says what a process does when a step of a warm load fails.  It also writes
the step, what failed and why beside the entry's index, so that ``stitch cache
explain`` can say why a run with that entry started cold long after the
warning scrolled away.  The file holds the last few distinct failures; the
entry itself (index, source, artifacts) is never changed by a failed load.
"""

from __future__ import annotations

import logging

import msgspec

from stitch.core.errors import StitchCacheError

from . import codec, location
from .codec import Record
from .files import atomic_write, locked, make_private_dirs

log = logging.getLogger("stitch")

# The failures kept, newest last (a failure seen again moves to the end).
KEEP = 8


class LoadFailure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    step: str  # "guards", "source", "pieces", "prebuilt records"
    what: str  # the guard, file or piece
    why: str


class LoadFailures(Record, frozen=True):
    KIND = "load-failures"
    VERSION = 1

    failures: tuple[LoadFailure, ...]


def read_failures(entry: str) -> tuple[LoadFailure, ...]:
    """The failures recorded in ``entry`` (none when there is no file);
    :class:`StitchCacheError` naming the file when it does not decode."""
    try:
        return codec.read(LoadFailures, location.load_failures_file(entry)).failures
    except FileNotFoundError:
        return ()


def record_failure(entry: str, root: str, failure: LoadFailure) -> None:
    """Add ``failure`` to ``entry``'s file; never fails the caller (a cache that
    cannot be written keeps nothing)."""
    path = location.load_failures_file(entry)
    try:
        make_private_dirs(entry, root)
        with locked(location.lock_file(entry)):
            try:
                kept = read_failures(entry)
            except StitchCacheError:
                kept = ()  # a damaged file is replaced
            kept = tuple(f for f in kept if f != failure)[-(KEEP - 1) :] + (failure,)
            atomic_write(path, codec.encode(LoadFailures(kept)))
    except OSError as exc:
        log.debug("stitch: cannot record the failed load in %s (%s)", path, exc)


def describe(failure: LoadFailure) -> str:
    return f"a warm load failed at its {failure.step} ({failure.what}): {failure.why}"
