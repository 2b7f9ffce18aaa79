"""What waits for a tiered start's last swap, run so that it never fails the
forward that made the swap (NOTE: [what waits for the last swap never fails a
forward])."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger("stitch")


def run_completions(
    label: str, callbacks: Sequence[Callable[[bool], None]], ok: bool, when: str
) -> None:
    """Call each of ``callbacks`` with ``ok``; an error is a warning naming
    ``label`` (and ``when``), and the next callback still runs.

    NOTE: [what waits for the last swap never fails a forward]
    The last swap runs what waited for every piece (``Tier.when_complete``:
    the saved forward's record written, the fleet's publish) on the serving
    thread, inside the forward that made it.  An error there used to fail
    that forward.  What is registered after the last swap runs at once, in
    the caller's thread, through the same loop.  In CI (run 30, 2026-11-30)
    transformers' server under the soak's 32 clients wrote the saved step's
    record at its last swap, and the record's read-back check
    (``ast.literal_eval``) raised ``SystemError: AST constructor recursion
    depth mismatch``: CPython 3.11.7 shares that depth across the
    interpreter, and another conversion began inside it (Stitch's own are
    guarded since: NOTE: [an AST built with the collector held off], in
    ``compat/python_ast.py``).  The continuous-batching loop died with the
    forward, and every request after it got a 503.  Now each callback's
    error is logged as a warning.  The forward returns its output, and what
    was not written is compiled or loaded again by the next start, as after
    a failed write.
    """
    for callback in callbacks:
        try:
            callback(ok)
        except Exception as exc:  # noqa: BLE001 - the forward goes on
            log.warning(
                "stitch: %s: %swhat waited for the last swap failed (%s: %s); "
                "serving goes on, and the next start redoes what it left undone",
                label,
                when,
                type(exc).__name__,
                exc,
            )
