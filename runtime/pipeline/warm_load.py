"""A warm load that fails costs a compile, never the process.

NOTE: [a warm load that fails compiles instead]
A warm start reads what an earlier process wrote and runs code torch and
Stitch did not write for this process: recorded guards, the stitching source,
the pieces' artifacts and their prebuilt records.  What is damaged on disk
has its own checks (a warning naming the file, then rebuilt: NOTE: [a broken
entry is reported once, by the run that rebuilds it]).  What none of them
foresaw (a guard torch's ShapeEnv refuses, a loader raising from inside torch)
must not crash a process whose cold start worked.  So each step runs under
:func:`warm_step`, which turns any other exception into
:class:`WarmLoadFailed`, naming the entry, the step, what failed (the guard,
file or piece) and why.

- A recorded guard that does not decode or check (``entry.py``): nothing is
  loaded yet; the entry is passed over as one whose guards do not hold, and
  the call compiles the next entry of the chain (a compile once, then warm).
- Any later step (installing the guards, the source, a piece, a prebuilt
  record): what was loaded may already be in use, so the whole call starts
  again as a cold call without the cache (``Compilation.built``): nothing read
  from the entry, nothing written to it.  The fault may be this process's,
  not the entry's, so the entry is left as it is for the processes it serves.

Either way: one warning, and the failure is recorded beside the entry
(``store/load_failures.py``) for ``stitch cache explain``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from stitch.core.errors import StitchCacheError, StitchError

from ..compat.dynamo import is_restart
from ..counter import compilation_counter
from ..store.load_failures import LoadFailure, record_failure
from ..store.location import root_of_entry

log = logging.getLogger("stitch")


class WarmLoadFailed(StitchCacheError):
    """A step of a warm load of ``entry`` failed: ``step``, ``what`` and ``why``."""

    def __init__(self, entry: str, step: str, what: str, why: str) -> None:
        super().__init__(f"{entry}: a warm load failed at its {step} ({what}): {why}")
        self.entry = entry
        self.failure = LoadFailure(step, what, why)


@contextlib.contextmanager
def warm_step(
    entry: str, step: str, what: str, keep: tuple[type[Any], ...] = (StitchError,)
) -> Iterator[None]:
    """Run one step of a warm load of ``entry``: an exception Stitch did not
    raise on purpose becomes :class:`WarmLoadFailed`.  Dynamo's restarts pass
    through, and so do the ``keep`` errors (by default Stitch's own, which the
    step's caller handles: a damaged artifact is compiled again)."""
    try:
        yield
    except WarmLoadFailed:
        raise
    except keep:
        raise
    except Exception as exc:
        if is_restart(exc):  # NOTE: [restarts pass through] (compilers.py)
            raise
        raise WarmLoadFailed(entry, step, what, f"{type(exc).__name__}: {exc}") from exc


def report(failed: WarmLoadFailed, then: str) -> str:
    """Warn once about ``failed`` and record it beside its entry; the line that
    says why the call starts cold (``then``: what the call does instead)."""
    compilation_counter.num_warm_load_failures += 1
    line = f"{failed}; {then}"
    log.warning("stitch cache: %s", line)
    record_failure(failed.entry, root_of_entry(failed.entry), failed.failure)
    return line
