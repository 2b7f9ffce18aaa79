"""A compile worker as the serving process sees it, forked or spawned
(NOTE: [forked or spawned compile workers], compile_workers.py): its handle,
the loop that compiles its pieces and reports each one, and how it ends."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, TextIO

import msgspec
import torch

from ...compat.shapes import added_guards, guard_mark
from ...counter import compilation_counter
from ...store.index import PieceRecord
from ...workers.proc_family import die_with_parent_thread
from .piece_jobs import UnitJob

log = logging.getLogger("stitch")

# Compile one piece (in the worker): its index record, once its artifacts are saved.
CompileOne = Callable[[str], PieceRecord]

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
# NOTE: [forked or spawned compile workers] (compile_workers.py)
START_ENV = "STITCH_COMPILE_START"


@dataclasses.dataclass
class Worker:
    """A started compile worker: its pid, the pipe it reports on (a forked
    worker's fd, or a pooled worker's file, open across jobs), its gate (-1:
    none), how to wait for its end (a description of how it ended) and, for a
    pooled worker, what to do once its job is reported in full."""

    pid: int
    reports: int | IO[str]
    gate: int
    ended: Callable[[], str]
    job_done: Callable[[], None] | None = None


# Start one worker for a group of units, at a priority (niceness(): None is
# idle) and gated or not (it waits on its gate).
Launch = Callable[[Sequence[UnitJob], int | None, bool], Worker]


def compile_and_report(
    names: Sequence[str], out: TextIO, compile_one: CompileOne, shape_env: Any
) -> None:
    """In a worker: compile each piece of ``names`` and write one JSON line per
    piece to ``out``: its index record and the guards its compile added to
    ``shape_env``, or the error it raised, with the counter changes."""
    mark = guard_mark(shape_env)
    for name in names:
        before = compilation_counter.snapshot()
        start = time.perf_counter()
        message: dict[str, Any] = {"piece": name}
        try:
            record = compile_one(name)
            guards = added_guards(mark)  # GuardCodecError: reported, not saved
        except BaseException as exc:  # noqa: BLE001 - reported, not raised
            message["error"] = f"{type(exc).__name__}: {exc}"
        else:
            message["record"] = msgspec.json.encode(record).decode()
            message["guards"] = guards
        after = compilation_counter.snapshot()
        message["counters"] = {k: after[k] - before[k] for k in after}
        message["seconds"] = time.perf_counter() - start
        out.write(json.dumps(message) + "\n")


def forget_the_parents_exit() -> None:
    """In a forked worker: a process of its own, not one exiting.

    NOTE: [a worker forked while its parent exits]
    A trace under way when the process exits normally (transformers' engine
    traces off its thread: NOTE: [the engine serves while Dynamo traces] in
    hf/saved_step.py) ends inside the interpreter's exit, where
    ``threading._shutdown`` joins the compile thread, and the tier it starts
    forks its workers then.  A forked worker inherits the flags that exit set:
    its compile's first ``threading._register_atexit`` raised "can't register
    atexit after shutdown" (concurrent.futures' modules call it when they are
    imported, and ``ThreadPoolExecutor.submit`` refuses after the exit), and
    every piece stayed uncompiled.  The worker has begun no exit of its own,
    so it clears them (where this Python has them) before it compiles.
    """
    import concurrent.futures.thread as executor_threads

    if getattr(threading, "_SHUTTING_DOWN", False):
        threading._SHUTTING_DOWN = False  # type: ignore[attr-defined]
    if getattr(executor_threads, "_shutdown", False):
        executor_threads._shutdown = False  # type: ignore[attr-defined]
    processes = sys.modules.get("concurrent.futures.process")
    if getattr(processes, "_global_shutdown", False):
        processes._global_shutdown = False  # type: ignore[union-attr]


def die_with_parent(parent: int | None = None) -> None:
    """End this worker with the process it compiles for.  ``parent=None``
    (started by the main thread): the kernel kills it when that thread ends
    (Linux only).  The kernel's signal follows the thread that forked or
    spawned, not the process, so a worker started by any other thread (an
    engine's, a server's) would die with that thread, its compile lost, while
    the process goes on and even waits for it at exit: such a worker instead
    watches its parent pid, ``parent``, and exits when it is gone."""
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
        return
    die_with_parent_thread()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)  # the serving process is gone: so is every job's use


def parent_to_watch() -> int | None:
    """What a worker started by the calling thread passes to
    :func:`die_with_parent`."""
    if threading.current_thread() is threading.main_thread():
        return None
    return os.getpid()


def ended_status(status: int) -> str:
    """How a worker ended, from ``os.waitpid``'s status."""
    if os.WIFSIGNALED(status):
        return ended_by(-os.WTERMSIG(status))
    return ended_by(os.WEXITSTATUS(status))


def ended_by(code: int) -> str:
    """How a worker ended, from its exit code (negative: the signal)."""
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code} before compiling it"


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


def start_method(example_inputs: Sequence[Any]) -> str:
    """How compile workers start: ``fork`` or ``spawn`` (NOTE: [forked or
    spawned compile workers])."""
    text = os.environ.get(START_ENV, "").strip().lower()
    if text in ("fork", "spawn"):
        return text
    if text:
        log.warning(
            "stitch: $%s=%r is neither fork nor spawn; choosing by the graph's devices",
            START_ENV,
            text,
        )
    if needs_spawn(example_inputs) or not hasattr(os, "fork"):
        return "spawn"
    return "fork"


def needs_spawn(example_inputs: Sequence[Any]) -> str:
    """Why a forked worker cannot compile for this graph ("" when it can)."""
    devices = {v.device.type for v in example_inputs if isinstance(v, torch.Tensor)}
    devices -= {"cpu", "meta"}
    if devices:
        return f"the graph runs on {', '.join(sorted(devices))}"
    if torch.cuda.is_initialized():
        return "this process has initialized CUDA"
    return ""
