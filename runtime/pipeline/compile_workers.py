"""The compile workers of a tiered start: forked processes that compile pieces
into the cache entry and report each one (NOTE: [a tiered start], tiered.py);
and the start of a backend call's tier, which forks them.

A replica that waits for another's fleet lease forks its workers gated: they
compile only if the lease comes to this process or the wait runs out, and
exit when the other replica's entry is installed instead, its pieces swapped
in from there.

A worker writes one JSON line per piece to its pipe: the piece's index record
and the guards its compile added, or the error it raised, with its counter
changes.  A worker that dies reports nothing more; its reader gives its
pieces up when the pipe closes.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from stitch.codegen import module_path_of

from ..compat.inductor import forget_compile_pools
from ..compat.shapes import added_guards, guard_mark
from ..counter import compilation_counter
from ..loader import DISPATCH_NAME
from ..store.cache import CompileCache
from ..store.index import PieceRecord
from .artifact_source import ArtifactSource
from .piecewise import PiecewiseBackend
from .results import Split
from .tiered import DeferredSource, Tier, add_counters, default_workers

log = logging.getLogger("stitch")

# Compile one piece (in the worker): its index record, once its artifacts are saved.
CompileOne = Callable[[str], PieceRecord]

_PR_SET_PDEATHSIG = 1

# NOTE: [a compile worker's niceness]
# By default a worker shares the cores with the serving process as an equal
# (niceness 0).  $STITCH_COMPILE_NICE raises its niceness: the serving process,
# or an engine still starting, keeps the cores it needs and the compile takes
# what is left.  Neither wins everywhere on a machine with few cores (2 here,
# docs/performance.md "Cold start"): at 10, vLLM's engine is ready 2.2 s after
# Dynamo alone rather than 12.5 s, but under forwards run back to back the
# last swap of the 3-layer example comes 9.6x the cold compile's time
# rather than 1.2x.
NICE_ENV = "STITCH_COMPILE_NICE"


def start_tier(
    compilation: Any,
    split: Split,
    fn: Callable[..., Any],
    backends: dict[str, PiecewiseBackend],
    cache: CompileCache,
    start: float,
    graph_key: str,
) -> Tier:
    """The tier of the pieces ``compilation`` (a backend call's
    ``Compilation``) runs uncompiled, their workers forked."""
    c = compilation
    deferred = c.source.deferred
    tier = Tier(
        c.config,
        cache,
        c.source,
        backends,
        deferred,
        c.range_warnings,
        start,
        f"graph {graph_key[:12]}",
    )
    tier.dispatch = (getattr(fn, "__kwdefaults__", None) or {}).get(DISPATCH_NAME)
    tier.held_guards = frozenset(c.entry_guards.held())
    items = {it.submod_name: it for it in split.compiled}

    def compile_one(name: str) -> PieceRecord:
        # In the worker: the ordinary compile, saved into the entry.
        if isinstance(c.source, DeferredSource):
            c.source = ArtifactSource(
                c.config,
                cache,
                adapter=c.adapter,
                note_guards=lambda: c.entry_guards.note(cache),
            )
            c.adapter.warm_up(cpu=True)
        item = items[name]
        path = module_path_of(item.graph)
        record, _ = c.compile_piece(
            name, item.graph, c.piece_args, path, split.layouts, cache
        )
        return record

    fleet = c.fleet
    waiting = fleet.waiting is not None
    # Twins (one compile key) go to one worker, in piece order.
    by_key: dict[str, list[str]] = {}
    for name in deferred:
        by_key.setdefault(c.source.key_of.get(name, name), []).append(name)
    tier.pids, go = start_workers(
        tier,
        list(by_key.values()),
        c.config.compile_workers or default_workers(len(by_key)),
        compile_one,
        c.entry_guards.shape_env,
        gated=waiting,
    )

    def complete(ok: bool) -> None:
        # What this process compiled: its factors, then the fleet's publish,
        # off the serving thread the last swap runs on; not a daemon, so that a
        # process that ends normally publishes and lets the lease go first.
        def end() -> None:
            if ok and not tier.installed:
                fleet.record(cache)
            fleet.end(ok)

        threading.Thread(target=end, name="stitch-tier-complete").start()

    tier.when_complete(complete)
    if waiting:
        # Another replica compiles this entry: the workers compile only if its
        # lease comes free or the wait runs out.
        def watch() -> None:
            installed = fleet.take_turn()
            if installed:
                tier.land_installed()
            go(not installed)

        threading.Thread(target=watch, name="stitch-fleet-wait", daemon=True).start()
    tier.returned_at = time.perf_counter() - start
    return tier


def start_workers(
    tier: Tier,
    units: Sequence[Sequence[str]],
    workers: int,
    compile_one: CompileOne,
    shape_env: Any,
    gated: bool = False,
) -> tuple[list[int], Callable[[bool], None]]:
    """Fork ``workers`` processes for the pieces of ``units`` (each unit's to
    one worker, units dealt in turn): their pids, and ``go``.  ``gated``
    workers wait for ``go(True)`` to compile, or ``go(False)`` to exit
    (another replica's entry came); others start now."""
    groups = [
        [name for unit in units[i::workers] for name in unit] for i in range(workers)
    ]
    names = [name for unit in units for name in unit]
    nice = _niceness()
    pids, gates = [], []
    for group in groups:
        if not group:
            continue
        read_fd, write_fd = os.pipe()
        gate_read, gate_write = os.pipe() if gated else (-1, -1)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(read_fd)
            if gated:
                os.close(gate_write)
            _work(group, write_fd, gate_read, compile_one, shape_env, nice)
        os.close(write_fd)
        if gated:
            os.close(gate_read)
            gates.append(gate_write)
        pids.append(pid)
        threading.Thread(
            target=_read,
            args=(tier, pid, read_fd, group),
            name=f"stitch-compile-reader-{pid}",
            daemon=True,
        ).start()
    log.info(
        "stitch: %d pieces %s in %d worker%s (pids %s) while the graph runs "
        "them uncompiled",
        len(names),
        "wait for the fleet's entry, else compile" if gated else "compile",
        len(pids),
        "" if len(pids) == 1 else "s",
        ", ".join(map(str, pids)),
    )

    def go(compile: bool) -> None:
        for fd in gates:
            try:
                os.write(fd, b"c" if compile else b"q")
            except OSError:
                pass  # that worker is gone: its reader gives its pieces up
            finally:
                os.close(fd)
        gates.clear()

    return pids, go


def _work(
    names: list[str],
    fd: int,
    gate: int,
    compile_one: CompileOne,
    shape_env: Any,
    nice: int,
) -> None:
    code = 0
    try:
        _die_with_parent()
        forget_compile_pools()  # NOTE: [Inductor's pools in a forked process]
        os.nice(nice)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        if gate >= 0 and os.read(gate, 1) != b"c":
            os._exit(0)  # another replica's entry was installed (or the parent died)
        mark = guard_mark(shape_env)
        with os.fdopen(fd, "w", buffering=1) as out:
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
    except BaseException:  # noqa: BLE001 - the parent sees the pipe close
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _niceness() -> int:
    """$STITCH_COMPILE_NICE (0 to 19; NOTE: [a compile worker's niceness])."""
    text = os.environ.get(NICE_ENV, "").strip() or "0"
    try:
        nice = int(text)
    except ValueError:
        nice = -1
    if not 0 <= nice <= 19:
        log.warning(
            "stitch: $%s=%r is not a niceness from 0 to 19; compiling at 0",
            NICE_ENV,
            text,
        )
        return 0
    return nice


def _die_with_parent() -> None:
    """Ask the kernel to kill this worker when the thread that forked it ends:
    a worker never outlives the process it compiles for (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _read(tier: Tier, pid: int, fd: int, group: list[str]) -> None:
    with os.fdopen(fd, "r") as lines:
        for line in lines:
            try:
                message = json.loads(line)
                name = message["piece"]
                add_counters(message.get("counters", {}))
                if "error" in message:
                    tier.give_up(name, f"its compile failed: {message['error']}")
                else:
                    record = msgspec.json.decode(message["record"], type=PieceRecord)
                    tier.landed(name, record, message.get("guards", ()))
            except Exception as exc:  # noqa: BLE001 - a reader must not die
                log.warning("stitch: compile worker %d sent %r: %s", pid, line, exc)
    _, status = os.waitpid(pid, 0)
    for name in group:
        if name not in tier.reported:
            tier.give_up(name, f"its compile worker (pid {pid}) {_ended(status)}")


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by {signal.Signals(sig).name}"
    return f"exited with status {os.WEXITSTATUS(status)} before compiling it"
