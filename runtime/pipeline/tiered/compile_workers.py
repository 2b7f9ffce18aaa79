"""The compile workers of a tiered start: processes that compile pieces into
the cache entry and report each one (NOTE: [a tiered start], tier.py); and
the start of a backend call's tier, which starts them.

NOTE: [forked or spawned compile workers]
A worker is forked where it can be: inside the backend call, so that it holds
Dynamo's tracing context, the fake inputs and every op the graph calls, and
nothing is sent to it.  A process that has initialized CUDA cannot fork a
child that uses it, so for a graph on a GPU (or in a process that has touched
CUDA) the worker is spawned: a fresh interpreter that receives its pieces
pickled, graphs, fake inputs and ShapeEnv (``compat/graph_pickle.py``,
``spawned_workers.py``), and compiles them the same way (``piece_jobs.py``).
``$STITCH_COMPILE_START`` (``fork`` or ``spawn``) chooses for every graph; a
forked worker for a graph on a GPU is refused, naming why.

A replica that waits for another's fleet lease starts its workers gated: they
compile only if the lease comes to this process or the wait runs out, and
exit when the other replica's entry is installed instead, its pieces swapped
in from there.

A worker writes one JSON line per piece to its pipe: the piece's index record
and the guards its compile added, or the error it raised, with its counter
changes.  A worker that dies reports nothing more; its reader gives its
pieces up when the pipe closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from stitch.codegen import module_path_of
from stitch.codegen.split import SplitItem

from ...loader import DISPATCH_NAME
from ...store.cache import CompileCache
from ...store.index import PieceRecord
from ...workers.exit_wait import wait_at_exit
from ...workers.priority import niceness
from ...workers.serving_first import controller
from ...workers.worker_cpus import default_workers
from ..layouts import LayoutChecks
from ..piecewise import PiecewiseBackend
from .forked_workers import forker
from .piece_jobs import PieceJob, UnitCompiler, UnitJob, piece_names
from .tier import Tier
from .tier_start import TierSource
from .tiered_piece import say_still_compiling
from .worker_process import CompileOne, Launch, Worker, add_counters

log = logging.getLogger("stitch")


def start_tier(
    call: TierSource,
    compiled: Sequence[SplitItem],
    layouts: LayoutChecks,
    fn: Callable[..., Any],
    backends: dict[str, PiecewiseBackend],
    cache: CompileCache,
    start: float,
    graph_key: str,
) -> Tier:
    """The tier of the pieces ``call`` (a backend call's ``Compilation``)
    runs uncompiled, their workers started."""
    c = call
    deferred = c.source.deferred
    units = _units(c, compiled, layouts, deferred)
    method = c.worker_start
    # What a forked worker runs, and this process where none can be started.
    compile_one = UnitCompiler(
        units,
        c.config,
        cache,
        c.size,
        note_guards=lambda: c.entry_guards.note(cache),
        adapter=c.adapter,
    )
    launch: Launch
    if method == "spawn":
        from .spawned_workers import spawner

        launch = spawner(units, c.config, cache, c.size, c.spawned_pool)
    else:
        launch = forker(compile_one, c.entry_guards.shape_env)
    fleet = c.fleet
    waiting = fleet.waiting is not None
    # The workers start before the tier exists; what they report waits in
    # their pipes until its readers start (``Launched.serve``).
    launched = launch_workers(
        units,
        c.config.compile_workers or default_workers(len(units)),
        Starts(launch, c.spawned_pool, compile_one),
        gated=waiting,
    )
    tier = Tier(
        c.config,
        cache,
        c.source,
        backends,
        deferred,
        c.range_warnings,
        start,
        f"graph {graph_key[:12]}",
        dispatch=(getattr(fn, "__kwdefaults__", None) or {}).get(DISPATCH_NAME),
        cuda_graphs=getattr(fn, "graphs", None),  # a PaddedRunner's
        held_guards=frozenset(c.entry_guards.held()),
        pids=launched.pids,
        returned_at=time.perf_counter() - start,
    )
    launched.serve(tier, method)
    _follow_fleet(tier, fleet, cache, launched.go if waiting else None)
    wait_at_exit(tier)  # NOTE: [a process that exits normally waits for its workers]
    if tier.pids:
        say_still_compiling(tier)  # NOTE: [say what is still compiling]
    return tier


def _follow_fleet(
    tier: Tier, fleet: Any, cache: CompileCache, go: Callable[[bool], None] | None
) -> None:
    """The fleet's part of a tier: publish what this process compiled once
    every piece is in, and (``go``: the workers are gated) wait for another
    replica's entry before the workers compile."""

    def complete(ok: bool) -> None:
        # What this process compiled: its factors, then the fleet's publish,
        # off the serving thread the last swap runs on; not a daemon, so that a
        # process that ends normally publishes and lets the lease go first
        # (NOTE: [the last swap's work is not cut off at exit], swap.py).
        def end() -> None:
            if ok and not tier.installed:
                fleet.record(cache)
            fleet.end(ok)

        threading.Thread(target=end, name="stitch-tier-complete", daemon=False).start()

    tier.when_complete(complete)
    if go is not None:
        # Another replica compiles this entry: the workers compile only if its
        # lease comes free or the wait runs out.
        def watch() -> None:
            installed = fleet.take_turn()
            if installed:
                tier.land_installed()
            go(not installed)

        threading.Thread(target=watch, name="stitch-fleet-wait", daemon=True).start()


def _units(
    c: TierSource,
    compiled: Sequence[SplitItem],
    layouts: LayoutChecks,
    deferred: dict[str, Any],
) -> list[UnitJob]:
    """The deferred pieces by compile key (repeated pieces in one unit), in piece order."""
    items = {it.submod_name: it for it in compiled}
    units: dict[str, UnitJob] = {}
    for name in deferred:
        graph = items[name].graph
        job = PieceJob(
            name,
            c.plans[name],
            module_path_of(graph),
            tuple(layouts.get(name, ())),
        )
        key = c.source.key_of.get(name, name)
        if key not in units:
            units[key] = UnitJob(graph, tuple(c.piece_args(name)), [])
        units[key].pieces.append(job)
    return list(units.values())


@dataclasses.dataclass
class Starts:
    """How a call's workers start (``launch``), the pool that remembers a
    process that cannot start them, and the compile of a unit's piece in this
    process for then (NOTE: [a process that cannot start compile workers])."""

    launch: Launch
    pool: Any
    here: CompileOne


@dataclasses.dataclass
class Launched:
    """A call's workers, started before its tier exists: each with its
    pieces' names, the units whose worker the OS refused (they compile in
    this process), the pieces whose worker failed to start and why, and the
    gates of gated workers."""

    workers: list[tuple[Worker, list[str]]]
    here: list[UnitJob]
    failed: dict[str, str]
    gates: list[int]
    compile_here: CompileOne

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker, _ in self.workers]

    def serve(self, tier: Tier, method: str) -> None:
        """The workers' reports go to ``tier``; what none compiles is given up
        or compiled here, before this returns."""
        for name, why in self.failed.items():
            tier.give_up(name, why)
        for worker, names in self.workers:
            threading.Thread(
                target=_read,
                args=(tier, worker, names),
                name=f"stitch-compile-reader-{worker.pid}",
                daemon=True,
            ).start()
        if self.workers:
            log.info(
                "stitch: %d pieces %s in %d %s worker%s (pids %s) while the graph "
                "runs them uncompiled",
                sum(len(names) for _, names in self.workers),
                "wait for the fleet's entry, else compile" if self.gates else "compile",
                len(self.workers),
                "spawned" if method == "spawn" else "forked",
                "" if len(self.workers) == 1 else "s",
                ", ".join(map(str, self.pids)),
            )
        _compile_here(tier, self.here, self.compile_here)

    def go(self, compile: bool) -> None:
        """Gated workers compile (``compile``) or exit (another replica's
        entry came)."""
        for fd in self.gates:
            try:
                os.write(fd, b"c" if compile else b"q")
            except OSError:
                pass  # that worker is gone: its reader gives its pieces up
            finally:
                os.close(fd)
        self.gates.clear()


def launch_workers(
    units: Sequence[UnitJob],
    workers: int,
    starts: Starts,
    gated: bool = False,
) -> Launched:
    """Start ``workers`` processes for ``units`` (dealt in turn, each unit to
    one worker).  ``gated`` workers wait for ``Launched.go(True)`` to
    compile, or ``go(False)`` to exit (another replica's entry came); others
    start now."""
    groups = [list(units[i::workers]) for i in range(workers)]
    nice = niceness()
    launched = Launched([], [], {}, [], starts.here)
    for group in groups:
        if not group:
            continue
        try:
            worker = starts.launch(group, nice, gated)
        except OSError as exc:
            # NOTE: [a process that cannot start compile workers]
            starts.pool.refuse(f"{type(exc).__name__}: {exc}")
            launched.here += group
            continue
        except Exception as exc:  # noqa: BLE001 - those pieces stay uncompiled
            why = (
                f"its compile worker could not be started ({type(exc).__name__}: "
                f"{exc})"
            )
            launched.failed.update(dict.fromkeys(piece_names(group), why))
            continue
        if gated:
            launched.gates.append(worker.gate)
        controller().watch(worker.pid)  # NOTE: [serving first]
        launched.workers.append((worker, piece_names(group)))
    return launched


def _compile_here(
    tier: Tier, units: Sequence[UnitJob], compile_one: CompileOne
) -> None:
    """Compile ``units`` in this process, in the backend call, as a cold start
    does; each piece lands as a worker's would, and swaps in at its next call.
    Guards the compile adds are this call's own (it is still Dynamo's)."""
    for name in piece_names(units):
        try:
            record = compile_one(name)
        except Exception as exc:  # noqa: BLE001 - that piece stays uncompiled
            tier.give_up(name, f"its compile failed: {type(exc).__name__}: {exc}")
        else:
            tier.landed(name, record, ())


def _read(tier: Tier, worker: Worker, names: list[str]) -> None:
    reports = worker.reports
    own = isinstance(reports, int)
    with os.fdopen(reports, "r") if own else contextlib.nullcontext(reports) as lines:
        for line in lines:
            try:
                message = json.loads(line)
                if "done" in message and worker.job_done is not None:
                    worker.job_done()  # a pooled worker, back to its pool
                    return
                name = message["piece"]
                add_counters(message.get("counters", {}))
                if "error" in message:
                    tier.give_up(name, f"its compile failed: {message['error']}")
                else:
                    record = msgspec.json.decode(message["record"], type=PieceRecord)
                    tier.landed(name, record, message.get("guards", ()))
            except Exception as exc:  # noqa: BLE001 - a reader must not die
                log.warning(
                    "stitch: compile worker %d sent %r: %s", worker.pid, line, exc
                )
    how = worker.ended()
    for name in names:
        if name not in tier.reported:
            tier.give_up(name, f"its compile worker (pid {worker.pid}) {how}")
