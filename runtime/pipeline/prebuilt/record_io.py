"""A compiled piece's prebuilt record, loaded in place of Inductor's load
or written after it (NOTE: [prebuilt pieces]): what the Inductor adapter's
``load`` and ``published`` do first and after."""

from __future__ import annotations

import logging
import os

from stitch.core.errors import StitchCacheError, StitchError

from ...counter import compilation_counter
from ...store.digests import file_hash
from ..piecewise import Runnable

log = logging.getLogger("stitch")


# Prebuilt records this process refused (warned about once).
_REFUSED: list[str] = []


def load_prebuilt_or_none(
    path: str, sha256: str | None, faults: set[str]
) -> Runnable | None:
    """The prebuilt runnable of the artifact at ``path``, or None: load it through
    Inductor.  A damaged prebuilt file is one warning naming it (``faults``: the
    files already reported), never loaded; the Inductor load then rewrites it."""
    # Imported here: a process that never loads a piece never imports them.
    from ...store.extras import ExtraFileError
    from ...store.location import entry_of_artifact
    from ..warm_load import WarmLoadFailed, warm_step
    from .load import NO_RECORD, PrebuiltUnavailable, load_prebuilt

    entry = entry_of_artifact(path)
    what = os.path.relpath(path, entry)
    # Unavailable (no record, another machine) and damaged are foreseen below.
    foreseen = (StitchError, PrebuiltUnavailable)
    try:
        # NOTE: [a warm load that fails compiles instead] (warm_load.py)
        with warm_step(entry, "prebuilt records", what, foreseen):
            runnable = load_prebuilt(path, sha256)
    except PrebuiltUnavailable as exc:
        if str(exc) == NO_RECORD or _REFUSED:
            log.debug("stitch: %s loads through Inductor: %s", path, exc)
        else:
            # A record this process cannot use (another GPU, another format):
            # one warning, the pieces load through Inductor (seconds of imports).
            _REFUSED.append(path)
            log.warning(
                "stitch cache: the prebuilt form of %s is refused (%s); its "
                "pieces load through Inductor",
                path,
                exc,
            )
        return None
    except WarmLoadFailed:
        raise
    except StitchCacheError as exc:
        where = exc.path if isinstance(exc, ExtraFileError) else str(exc)
        if where not in faults:
            faults.add(where)
            compilation_counter.num_cache_faults += 1
            log.warning("stitch cache: %s; loading that piece through Inductor", exc)
        return None
    compilation_counter.num_prebuilt_loads += 1
    return runnable


def write_prebuilt_record(path: str) -> str | None:
    """Save the prebuilt record of the artifact at ``path`` (never fails the caller);
    the artifact's sha256 when a record was written, else None."""
    from .load import PrebuiltUnavailable
    from .save import save_prebuilt

    try:
        sha256 = file_hash(path)
        save_prebuilt(path, sha256)
    except PrebuiltUnavailable as exc:
        log.info("stitch: piece %s will load through Inductor: %s", path, exc)
    except OSError as exc:
        # An unwritable cache is reported once by the store; a missing prebuilt
        # record only means the next load goes through Inductor.
        log.info("stitch: no prebuilt record for %s (%s)", path, exc)
    except Exception as exc:  # noqa: BLE001 - the artifact itself is saved
        log.warning(
            "stitch cache: no prebuilt record for %s (%s: %s)",
            path,
            type(exc).__name__,
            exc,
        )
    else:
        return sha256
    return None
