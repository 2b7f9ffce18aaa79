"""A process's exit waits for its compile workers (NOTE: [a process that
exits normally waits for its workers]).

NOTE: [a process that exits normally waits for its workers]
A tiered start is the default of a backend call, and a short script (a test,
a notebook run again, a tool) may end before its workers do.  Killed with it,
they would leave the cache without the rest of the pieces, and every later
run would start cold again, serving uncompiled: a loss against the cold
start, whose one wait leaves every later run warm.  So a process that exits
normally (its main thread returns, ``sys.exit``, Ctrl-C) first waits, in an
``atexit`` hook, for its workers to land or give up every piece: at most the
rest of the compile, no longer than a cold start would have waited, and the
next run starts warm.  Once they have landed, what waits for the last swap
runs too (``Tier.complete_at_exit``): a saved forward is written then, so
the next process loads it without Dynamo though this one swapped nothing
in.  A process killed, or ended by ``os._exit``, takes its
workers with it as before; Stitch's own ``os._exit`` (transformers' server,
past a thread of transformers' that did not stop) calls
:func:`land_before_exit` first.  A trace still under way that may start a
tier (transformers' engine traces off its own thread: NOTE: [the engine
serves while Dynamo traces] in hf/saved_step.py) is waited for first
(:func:`finish_before_exit`), so that its tier is among those waited for.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

from .serving_first import controller
from .tier import Tier

log = logging.getLogger("stitch")


# The tiers whose workers may still compile (NOTE: [a process that exits
# normally waits for its workers]).
_COMPILING: weakref.WeakSet[Tier] = weakref.WeakSet()
# The traces under way whose backend calls may start a tier, their labels, and
# what makes each hurry (None: nothing).
_TRACING: dict[
    concurrent.futures.Future[Any], tuple[str, Callable[[], None] | None]
] = {}


def wait_at_exit(tier: Tier) -> None:
    """Wait for ``tier``'s workers when this process exits normally (one
    ``atexit`` hook for every tier, registered with the first)."""
    _hook()
    _COMPILING.add(tier)


def finish_before_exit(
    trace: concurrent.futures.Future[Any],
    label: str,
    hurry: Callable[[], None] | None = None,
) -> None:
    """Let ``trace`` (a backend call under way in another thread, ``label``
    naming it) end before an exit waits for the tiers, since it may start one;
    ``hurry`` first, where it waits for something an exit will not bring (a
    build waiting for a forward: NOTE: [Dynamo's graph serves while the
    stitching is built])."""
    _hook()
    _TRACING[trace] = (label, hurry)
    trace.add_done_callback(lambda done: _TRACING.pop(done, None))


def _hook() -> None:
    if not _COMPILING and not _TRACING:
        atexit.unregister(land_before_exit)
        atexit.register(land_before_exit)


def land_before_exit() -> None:
    """Wait for every trace under way, then every tier's workers, as a
    process's exit does (NOTE: [a process that exits normally waits for its
    workers]); also for a process about to end with ``os._exit``, which runs
    no ``atexit`` hook."""
    for trace, (label, hurry) in list(_TRACING.items()):
        if hurry is not None:
            hurry()
        if not trace.done():
            log.info(
                "stitch: %s: waiting for Dynamo's trace before exiting, so that "
                "its pieces compile",
                label,
            )
        concurrent.futures.wait([trace])
    for tier in list(_COMPILING):
        _land_before_exit(tier)


def _land_before_exit(tier: Tier) -> None:
    """NOTE: [a process that exits normally waits for its workers]."""
    if not tier.wait(0):
        controller().release()  # NOTE: [serving first]: never wait on a paused worker
        log.info(
            "stitch: %s: waiting for its compile workers before exiting, so that "
            "the next start finds every piece",
            tier.label,
        )
        while not tier.wait(1.0) and any(map(_running, tier.pids)):
            pass  # a worker that ended reported, or its reader gives its pieces up
    tier.complete_at_exit()


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
