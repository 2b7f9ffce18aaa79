"""A process's exit waits for its compile workers (NOTE: [a process that
exits normally waits for its workers]): for the jobs of each group it is
given (:class:`Compiling`; a tiered start gives its ``Tier``).

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

NOTE: [an exit the user asked for waits at most seconds]
Ctrl+C is a request to stop, not to finish a compile: a server stopped that
way took 13 s to exit after serving a request.  So an exit the user asked
for, Ctrl+C on a script (its main thread ended by ``KeyboardInterrupt``,
which Python leaves in ``sys.last_value`` for the exit hooks) or a signal that
stopped the server (``limit``), waits at most ``INTERRUPTED_WAIT_S`` for the
pieces about to land, saying which; then it stops the workers (SIGKILL to
each worker's family, resumed first).  What landed is in the cache's index,
and a piece is there only once its artifacts are written, so the next start
loads it and compiles the rest.  Ctrl+C during any of these waits, that of a
normal exit included, ends the wait at once the same way.  Python's teardown
after it then skips its collections (NOTE: [an exit the user asked for skips
the teardown's collections]).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import gc
import logging
import os
import signal
import sys
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from .proc_family import family, signal_all
from .serving_first import controller

log = logging.getLogger("stitch")


class Compiling(Protocol):
    """What an exit waits for: named jobs (``backends``: a tiered start's
    pieces, its ``Tier``) that the processes ``pids`` work on, those
    ``reported`` and, of them, ``failed``.  ``wait`` waits until every job is
    reported; ``complete_at_exit`` runs what waits for the last of them;
    ``stopping`` set says the workers are stopped on purpose."""

    label: str
    pids: list[int]
    backends: Mapping[str, Any]
    reported: set[str]
    failed: Collection[str]
    stopping: bool

    def wait(self, timeout: float | None = None) -> bool: ...

    def complete_at_exit(self) -> None: ...


# Seconds an exit the user asked for waits for pieces about to land (NOTE:
# [an exit the user asked for waits at most seconds]).
INTERRUPTED_WAIT_S = 2.0


# The groups (a tiered start's tiers) whose workers may still compile (NOTE:
# [a process that exits normally waits for its workers]).
_COMPILING: weakref.WeakSet[Compiling] = weakref.WeakSet()
# The traces under way whose backend calls may start a tier, their labels, and
# what makes each hurry (None: nothing).
_TRACING: dict[
    concurrent.futures.Future[Any], tuple[str, Callable[[], None] | None]
] = {}


def wait_at_exit(group: Compiling) -> None:
    """Wait for ``group``'s workers when this process exits normally (one
    ``atexit`` hook for every group, registered with the first)."""
    _hook()
    _COMPILING.add(group)


def finish_before_exit(
    trace: concurrent.futures.Future[Any],
    label: str,
    hurry: Callable[[], None] | None = None,
) -> None:
    """Let ``trace`` (a backend call under way in another thread, ``label``
    naming it) end before an exit waits for the groups, since it may start one;
    ``hurry`` first, where it waits for something an exit will not bring (a
    build waiting for a forward: NOTE: [Dynamo's graph serves while the
    stitching is built])."""
    _hook()
    _TRACING[trace] = (label, hurry)
    trace.add_done_callback(lambda done: _TRACING.pop(done, None))


def wait_compiled(timeout: float | None = None) -> bool:
    """Wait until every piece of this process's tiered starts has landed in
    the cache or was given up, the traces and builds under way first; whether
    all did within ``timeout`` seconds.  Each landed piece swaps in at its next
    call: time forwards after one more (NOTE: [a tiered start])."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for trace, (_label, hurry) in list(_TRACING.items()):
        if hurry is not None:
            hurry()
        concurrent.futures.wait([trace], timeout=_left(deadline))
        if not trace.done():
            return False
    return all(group.wait(_left(deadline)) for group in list(_COMPILING))


def _hook() -> None:
    if not _COMPILING and not _TRACING:
        atexit.unregister(land_before_exit)
        atexit.register(land_before_exit)


def land_before_exit(limit: float | None = None) -> bool:
    """Wait for every trace under way, then every group's workers, as a
    process's exit does (NOTE: [a process that exits normally waits for its
    workers]); also for a process about to end with ``os._exit``, which runs
    no ``atexit`` hook.  ``limit``: seconds at most, then the workers are
    stopped (NOTE: [an exit the user asked for waits at most seconds]); an
    exit after Ctrl+C waits ``INTERRUPTED_WAIT_S`` at most.  Whether every
    trace and worker ended (False: a trace may still run, and an exit that
    must not wait for it ends with ``os._exit``)."""
    if limit is None and isinstance(
        getattr(sys, "last_value", None), KeyboardInterrupt
    ):
        limit = INTERRUPTED_WAIT_S
    deadline = None if limit is None else time.monotonic() + max(0.0, limit)
    try:
        for trace, (label, hurry) in list(_TRACING.items()):
            if hurry is not None:
                hurry()
            if not trace.done():
                log.info(
                    "stitch: %s: waiting for Dynamo's trace before exiting, so "
                    "that its pieces compile%s",
                    label,
                    _how_long(deadline),
                )
            concurrent.futures.wait([trace], timeout=_left(deadline))
            if not trace.done():
                log.warning(
                    "stitch: %s: exiting after %.0f s without its trace, which "
                    "the next start runs again",
                    label,
                    limit,
                )
        for group in list(_COMPILING):
            _land_before_exit(group, deadline)
    except KeyboardInterrupt:
        _stop_workers("at Ctrl+C")
        _skip_teardown_collections()
        return not _TRACING
    if deadline is not None and time.monotonic() >= deadline:
        _stop_workers(f"after {limit:.0f} s")
    if limit is not None:
        _skip_teardown_collections()
    return not _TRACING


def _skip_teardown_collections() -> None:
    """NOTE: [an exit the user asked for skips the teardown's collections]
    Once the wait is over, an exit still had Python's own teardown: the
    collections it runs as it clears the modules, each walking every object
    of torch, Dynamo, Inductor and the model.  On the 2-core machine beside
    five busy processes (as CI's extended step runs beside vLLM's tests),
    that took 3.5 to 8 s of a Ctrl+C exit of 5 to 10 s, and a test of the
    10 s target failed once in CI.  So an exit the user asked for freezes
    every object (``gc.freeze``) when its wait is done: the collections
    after it walk only what the teardown makes, and the exit took 3.3 to
    3.7 s against 7.0 to 8.2 s in alternating runs (docs/performance.md,
    "A Ctrl+C exit's teardown").  What a collection would have found is
    freed with the process; a ``__del__`` of an object in a cycle does not
    run, which Python never promised at exit.  A normal exit keeps Python's
    teardown as it is."""
    gc.freeze()


def _land_before_exit(group: Compiling, deadline: float | None) -> None:
    """NOTE: [a process that exits normally waits for its workers]."""
    if not group.wait(0):
        controller().release()  # NOTE: [serving first]: never wait on a paused worker
        waiting = sorted(set(group.backends) - group.reported)
        log.warning(
            "stitch: %s: waiting for its compile workers to land %d piece%s (%s) "
            "before exiting, so that the next start finds them%s; Ctrl+C stops "
            "them now, and the next start compiles what is missing",
            group.label,
            len(waiting),
            "" if len(waiting) == 1 else "s",
            ", ".join(waiting),
            _how_long(deadline),
        )
        while True:
            left = _left(deadline)
            if group.wait(1.0 if left is None else min(1.0, left)):
                break
            if not any(map(_running, group.pids)):
                break  # a worker that ended reported, or its reader gives up
            if left is not None and left <= 0:
                return
    group.complete_at_exit()


def _stop_workers(why: str) -> None:
    """Stop every group's workers that still compile, their families with them
    (NOTE: [an exit the user asked for waits at most seconds])."""
    controller().release()
    for group in list(_COMPILING):
        left = sorted(set(group.backends) - group.reported)
        if not left:
            continue
        group.stopping = True
        pids = [q for pid in group.pids if pid != os.getpid() for q in family(pid)]
        signal_all(pids, signal.SIGKILL)
        log.warning(
            "stitch: %s: exiting %s without %d piece%s still compiling (%s): the "
            "cache keeps the %d that landed, and the next start compiles the rest",
            group.label,
            why,
            len(left),
            "" if len(left) == 1 else "s",
            ", ".join(left),
            len(group.reported) - len(group.failed),
        )


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _how_long(deadline: float | None) -> str:
    left = _left(deadline)
    return "" if left is None else f" (at most {left:.0f} s more)"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
