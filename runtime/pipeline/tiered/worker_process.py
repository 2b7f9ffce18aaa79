"""A compile worker as the serving process sees it, forked or spawned
(NOTE: [forked or spawned compile workers], compile_workers.py): its handle,
and the loop that compiles its pieces and reports each one.  How a worker
starts, takes its priority and ends is the worker pool's (runtime/workers/:
``start_method.py``, ``priority.py``, ``proc_family.py``)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, TextIO

import msgspec

from ...compat.shapes import added_guards, guard_mark
from ...counter import compilation_counter
from ...store.index import PieceRecord
from .piece_jobs import UnitJob

# Compile one piece (in the worker): its index record, once its artifacts are saved.
CompileOne = Callable[[str], PieceRecord]


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


def add_counters(deltas: dict[str, int]) -> None:
    """Add a worker's counter changes (a report's ``counters``) to this
    process's counter."""
    for field, delta in deltas.items():
        if hasattr(compilation_counter, field):
            setattr(
                compilation_counter, field, getattr(compilation_counter, field) + delta
            )
