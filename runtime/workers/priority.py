"""A compile worker's priority: $STITCH_COMPILE_NICE, and taking it (NOTE: [a
compile worker's priority])."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("stitch")

# NOTE: [a compile worker's priority]
# A compile worker should not delay a forward, nor an engine still starting,
# and should take every core the serving process leaves idle; and its compile
# must end.  On few cores no one priority gives all three (2 here,
# docs/performance.md "Cold start"): at niceness 0 vLLM's engine was ready
# 12.5 s after Dynamo alone, at 10 in 2.2 s but the example's last swap under
# forwards run back to back came at 9.6x the cold compile's time.  Linux's
# SCHED_IDLE class gives the first two exactly (the kernel hands a worker a
# core only when no other thread wants it, at once; any process may enter the
# class, unprivileged, and its threads and children inherit it; leaving it
# takes privilege), but not the third: while every core is busy, with forwards
# run back to back or with other work on a shared machine, a worker at idle
# priority gets nothing, and was measured to take 30 times as long and more
# (docs/performance.md, "A worker's priority").  So the niceness stays 0, and
# what gives way to the serving process is the controller of NOTE: [serving
# first] (workers/serving_first.py), which pauses workers while they make it wait and
# keeps a share for them however busy it is.  $STITCH_COMPILE_NICE chooses a
# fixed priority besides, for a machine whose owner knows its load: ``idle``
# (SCHED_IDLE; niceness 19 where the class is missing) or a niceness from 0
# to 19.
NICE_ENV = "STITCH_COMPILE_NICE"


def niceness() -> int | None:
    """The priority $STITCH_COMPILE_NICE names: a niceness from 0 (the
    default) to 19, or None for ``idle`` (NOTE: [a compile worker's
    priority])."""
    text = os.environ.get(NICE_ENV, "").strip().lower() or "0"
    if text == "idle":
        return None
    try:
        nice = int(text)
    except ValueError:
        nice = -1
    if not 0 <= nice <= 19:
        log.warning(
            "stitch: $%s=%r is neither idle nor a niceness from 0 to 19; "
            "compiling at 0",
            NICE_ENV,
            text,
        )
        return 0
    return nice


def take_priority(nice: int | None, pid: int = 0) -> None:
    """Put process ``pid`` (0: this one; a pid: its main thread, and the
    threads it starts after) ``nice`` above the caller's niceness, or at idle
    priority (``nice`` None: SCHED_IDLE, else niceness 19).  Quiet where the
    system refuses: the worker then shares the cores as an equal."""
    if nice == 0:
        return
    if nice is None:
        try:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
            return
        except (AttributeError, OSError):
            nice = 19
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, pid, min(19, base + nice))
    except (AttributeError, OSError):
        pass
