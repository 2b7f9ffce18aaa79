"""A compile worker as the serving process sees it, forked or spawned
(NOTE: [forked or spawned compile workers], compile_workers.py): its handle,
the loop that compiles its pieces and reports each one, and how it ends."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import msgspec

from ..compat.shapes import added_guards, guard_mark
from ..counter import compilation_counter
from ..store.index import PieceRecord
from .piece_jobs import UnitJob

# Compile one piece (in the worker): its index record, once its artifacts are saved.
CompileOne = Callable[[str], PieceRecord]

_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class Worker:
    """A started compile worker: its pid, the pipe it reports on, its gate
    (-1: none) and how to wait for its end (a description of how it ended)."""

    pid: int
    reports: int
    gate: int
    ended: Callable[[], str]


# Start one worker for a group of units (gated: it waits on its gate).
Launch = Callable[[Sequence[UnitJob], int, bool], Worker]


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
        except BaseException as exc:  # noqa: BLE001 - reported, not raised
            message["error"] = f"{type(exc).__name__}: {exc}"
        else:
            message["record"] = msgspec.json.encode(record).decode()
            message["guards"] = added_guards(mark)
        after = compilation_counter.snapshot()
        message["counters"] = {k: after[k] - before[k] for k in after}
        message["seconds"] = time.perf_counter() - start
        out.write(json.dumps(message) + "\n")


def die_with_parent() -> None:
    """Ask the kernel to kill this worker when the thread that forked it ends:
    a worker never outlives the process it compiles for (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


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
