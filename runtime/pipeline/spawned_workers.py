"""Spawned compile workers: a fresh interpreter per worker that receives its
pieces pickled (NOTE: [forked or spawned compile workers], compile_workers.py).

The serving process pickles each worker's units (graphs, fake inputs with
their ShapeEnv, plans), the config, the cache entry and the runtime size with
``compat/graph_pickle.py``, and starts ``python -m
stitch.runtime.pipeline.spawned_workers PARENT REPORTS GATE``.  On its stdin
the worker reads one JSON line (the parent's ``sys.path``, the modules that
define the ops and modules the graphs name, its pieces' names, the grad mode
and other global state a compile reads)
and then the pickle; it reports on the ``REPORTS`` pipe exactly as a forked
worker does, and a gated worker waits for one byte on ``GATE``.  A piece it
cannot read (an op defined in ``__main__``, a pass that does not pickle) is
reported as that piece's error, so it stays uncompiled with one warning that
says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

import torch

from ..compat.fake import tracing
from ..config import CompilationConfig
from ..store.cache import CompileCache
from .entry import EntryGuards
from .inductor_warmup import start_inductor_warmup
from .piece_jobs import UnitCompiler, UnitJob, piece_names
from .worker_process import (
    Launch,
    Worker,
    compile_and_report,
    die_with_parent,
    ended_by,
)

# Modules every worker imports before it reads its pieces (Stitch's own ops).
ALWAYS = ("stitch.runtime",)


@dataclasses.dataclass
class SpawnJob:
    """What one spawned worker receives (pickled): each unit on its own, so
    that a unit the worker cannot read leaves the others to compile."""

    # Each unit's piece names and its UnitJob, pickled by compat.graph_pickle.
    units: list[tuple[list[str], bytes]]
    config: CompilationConfig
    cache: CompileCache
    size: Any


@dataclasses.dataclass
class Spawned:
    """A spawned worker waiting for its job: the process, the pipe it reports
    on and its gate (write ends: one byte, ``c`` to compile)."""

    process: subprocess.Popen[bytes]
    reports: int
    gate: int

    def close(self) -> None:
        """Let a worker that got no job go (it exits at the end of its stdin)."""
        for fd in (self.reports, self.gate):
            os.close(fd)
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        threading.Thread(target=self.process.wait, daemon=True).start()


def spawn(cpu: bool, nice: int) -> Spawned:
    """Start a worker: it imports Stitch and Inductor (and, for a graph on
    the CPU, probes the vector ISA) while it waits for its job on stdin."""
    reports_read, reports_write = os.pipe()
    gate_read, gate_write = os.pipe()
    passed = (reports_write, gate_read)
    command = [sys.executable, "-m", __name__, str(os.getpid()), *map(str, passed)]
    try:
        process = subprocess.Popen(
            [*command, "cpu" if cpu else "gpu"], stdin=subprocess.PIPE, pass_fds=passed
        )
    except BaseException:
        os.close(reports_read)
        os.close(gate_write)
        raise
    finally:
        for fd in passed:
            os.close(fd)
    if nice:
        # Before its threads start, which inherit it.
        base = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, process.pid, min(19, base + nice))
    return Spawned(process, reports_read, gate_write)


class Prestarted:
    """Workers spawned at the start of a cold backend call, so that their
    interpreter, torch and Inductor load while the call splits, plans and
    emits (NOTE: [forked or spawned compile workers]); :meth:`close` lets
    those no piece needed go."""

    def __init__(self, count: int, cpu: bool, nice: int) -> None:
        self.cpu = cpu
        self.ready = [spawn(cpu, nice) for _ in range(count)]

    def take(self, nice: int) -> Spawned:
        return self.ready.pop(0) if self.ready else spawn(self.cpu, nice)

    def close(self) -> None:
        while self.ready:
            self.ready.pop().close()


def spawner(
    units: Sequence[UnitJob],
    config: CompilationConfig,
    cache: CompileCache,
    size: Any,
    workers: Prestarted,
) -> Launch:
    """Launch by spawning (or taking a prestarted worker): each worker gets
    its group of ``units`` pickled."""
    modules = defining_modules(units)

    def launch(group: Sequence[UnitJob], nice: int, gated: bool) -> Worker:
        from ..compat import graph_pickle

        units = [(piece_names([u]), graph_pickle.dumps(u)) for u in group]
        data = pickle.dumps(SpawnJob(units, config, cache, size))
        header = {
            "sys_path": list(sys.path),
            "modules": modules,
            "names": piece_names(group),
            "state": global_state(),
        }
        spawned = workers.take(nice)
        process, gate = spawned.process, spawned.gate
        if not gated:
            os.write(gate, b"c")
            os.close(gate)
            gate = -1
        # The pipe holds 64 KiB: the rest goes while the worker reads.
        threading.Thread(
            target=_send,
            args=(process.stdin, header, data),
            name=f"stitch-compile-job-{process.pid}",
            daemon=True,
        ).start()
        return Worker(
            process.pid, spawned.reports, gate, lambda: ended_by(process.wait())
        )

    return launch


def global_state() -> dict[str, Any]:
    """The state of this thread and process that a compile reads and Dynamo's
    graph does not hold (a forked worker inherits it): grad mode (a piece
    compiled with grad on becomes a training graph), matmul precision,
    deterministic algorithms, the default dtype."""
    return {
        "grad": torch.is_grad_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
    }


def set_global_state(state: dict[str, Any]) -> None:
    torch.set_grad_enabled(state["grad"])
    torch.set_float32_matmul_precision(state["matmul_precision"])
    torch.use_deterministic_algorithms(state["deterministic"])
    torch.set_default_dtype(getattr(torch, state["default_dtype"]))


def _send(pipe: IO[bytes], header: dict[str, Any], data: bytes) -> None:
    try:
        with pipe:
            pipe.write(json.dumps(header).encode() + b"\n")
            pipe.write(data)
    except OSError:
        pass  # the worker is gone: its reader gives its pieces up


def defining_modules(units: Sequence[UnitJob]) -> list[str]:
    """The modules a worker imports before it unpickles ``units``: Stitch's,
    those of the modules the graphs were traced from, of the functions they
    call and of the custom ops' definitions, as far as they can be found
    (an op whose module is not imported fails the read, naming the op)."""
    found = dict.fromkeys(ALWAYS)
    for unit in units:
        for node in unit.graph.graph.nodes:
            for _, kind in (node.meta.get("nn_module_stack") or {}).values():
                found[_module_of(kind)] = None
            if node.op == "call_function":
                found[_module_of(node.target)] = None
    return [m for m in found if m and m != "__main__" and not _is_torch(m)]


def _module_of(thing: Any) -> str:
    if isinstance(thing, str):  # a qualified class name
        return thing.rpartition(".")[0]
    if isinstance(thing, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        from torch._library.custom_ops import OPDEFS

        # An overload's schema names its op; a packet has no schema.
        opdef = OPDEFS.get(getattr(getattr(thing, "_schema", None), "name", ""))
        fn = getattr(opdef, "_init_fn", None)
        return getattr(fn, "__module__", "") or ""
    return getattr(thing, "__module__", "") or ""


def _is_torch(module: str) -> bool:
    return module in ("torch", "builtins", "_operator", "operator", "math") or (
        module.startswith("torch.")
    )


def main(argv: Sequence[str]) -> int:
    """A spawned worker: read the job on stdin, compile, report (see above)."""
    parent, reports, gate = (int(a) for a in argv[:3])
    die_with_parent()
    if os.getppid() != parent:
        return 0  # the serving process is already gone
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # What the first compile needs, loaded while the serving process splits.
    start_inductor_warmup(cpu=argv[3] == "cpu")
    stdin = sys.stdin.buffer
    line = stdin.readline()
    if not line:
        return 0  # no piece needed this worker
    header = json.loads(line)
    sys.path[:] = header["sys_path"]
    set_global_state(header["state"])
    with os.fdopen(reports, "w", buffering=1) as out:
        try:
            for module in header["modules"]:
                _import(module)
            job = pickle.loads(stdin.read())
        except Exception as exc:  # noqa: BLE001 - reported per piece
            _cannot_read(out, header["names"], exc)
            return 0
        if gate >= 0 and os.read(gate, 1) != b"c":
            return 0  # another replica's entry was installed (or the parent died)
        for names, data in job.units:
            _compile_unit(out, names, data, job)
    return 0


def _compile_unit(out: IO[str], names: list[str], data: bytes, job: SpawnJob) -> None:
    from ..compat import graph_pickle

    try:
        unit, fake_mode = graph_pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - reported per piece
        _cannot_read(out, names, exc)
        return
    assert isinstance(unit, UnitJob)
    guards = EntryGuards(fake_mode.shape_env)
    compile_one = UnitCompiler(
        [unit],
        job.config,
        job.cache,
        job.size,
        note_guards=lambda: guards.note(job.cache),
    )
    # What Dynamo's backend call provides a forked worker: the tracing context
    # whose fake mode the general targets compile under.
    with tracing(fake_mode):
        compile_and_report(names, out, compile_one, fake_mode.shape_env)


def _cannot_read(out: IO[str], names: Sequence[str], exc: BaseException) -> None:
    why = f"a spawned compile worker cannot read it ({type(exc).__name__}: {exc})"
    for name in names:
        out.write(json.dumps({"piece": name, "error": why}) + "\n")


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a missing op fails the read, named
        print(f"stitch: compile worker: import {module} failed: {exc}", file=sys.stderr)


if __name__ == "__main__":
    # Run as the module Stitch imports, so that the pickle's classes are these.
    from stitch.runtime.pipeline.spawned_workers import main as _main

    code = _main(sys.argv[1:])
    # Every artifact is written and reported: exit now, as a forked worker
    # does, rather than wait for Inductor's build pools and probe threads to
    # wind down (they kept a core busy for seconds after the last report).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
