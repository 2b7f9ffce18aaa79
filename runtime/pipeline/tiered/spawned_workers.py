"""Spawned compile workers: a fresh interpreter that receives its pieces
pickled (NOTE: [forked or spawned compile workers], compile_workers.py), kept
in a pool between jobs (NOTE: [pre-started compile workers], spawned_pool.py).

The pool starts ``python -m stitch.runtime.pipeline.tiered.spawned_workers PARENT
REPORTS READY cpu|gpu PARENT_DEATH idle|NICE [MODULE...]``: the worker takes its
priority (NOTE: [a compile worker's priority]), imports Stitch,
the modules named, torch and Inductor, starts Inductor's build pools and
waits for a job, while it probes the vector ISA (on the CPU) and then writes
one byte on ``READY``.  For
each job the serving process pickles the units of one worker (graphs, fake
inputs with their ShapeEnv, plans), the config, the cache entry and the
runtime size with ``compat/graph_pickle.py``; on its stdin the worker reads
one JSON line (the parent's ``sys.path``, the modules that define the ops and
modules the graphs name, its pieces' names, the grad mode and other global
state a compile reads, the pickle's length) and then the pickle.  It reports
on the ``REPORTS`` pipe exactly as a forked worker does, then ``{"done":
true}``.  A piece it cannot read (an op defined in ``__main__``, a pass that
does not pickle) is reported as that piece's error, so it stays uncompiled
with one warning that says why.

NOTE: [a pre-started worker probes narrow until its first job]
A worker started with the backend imports while the serving process runs
Dynamo's trace, and its ISA probe (NOTE: [the ISA probe's candidates side by
side]) used to begin as soon as its imports ended: two compiler processes
beside the trace, three runnable threads on 2 cores.  Beside the 3-layer
example's trace on the 2-core machine, that probe cost Dynamo alone's first
output 1.07 s (median of 7 paired rounds), against 0.30 s for the same
imports with one candidate at a time and 0.46 s for a mere busy loop
(docs/performance.md, "What of a spawned worker's start costs the trace").
So until its first job comes, which the serving process sends only once its
trace, split and build are done, the worker checks one candidate at a time;
from the job on, side by side, as a forked worker's probe (begun at its
first job) checks from its start.  With an empty Inductor cache the probe is
long (11.5 s side by side, 21 s one at a time, there), so a worker whose
job comes early has most of it left to run wide, and one whose job comes
late (32 layers: a trace of 13 s) had it run narrow, and mostly done, during
the trace.  A compile that must wait for the whole probe (a release without
``valid_vec_isa_list``: NOTE: [a compile waits for the probe only where it
asks]) widens it first.  Nor does the probe begin before the worker's own
imports end (NOTE: [a pre-started worker's probe waits for its imports]).
Where Inductor takes the first valid ISA, the probe now checks one candidate
at a time up to it, and no other (NOTE: [only the ISA Inductor picks is
probed]): narrow or wide matters only where the environment picks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import pickle
import select
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

import torch

from ...compat import inductor
from ...compat.fake import tracing
from ...compat.inductor import size_compile_threads_again, warm_compile_pools
from ...config import CompilationConfig
from ...store.cache import CompileCache
from ...workers.priority import take_priority
from ...workers.proc_family import die_with_parent, ended_by
from ...workers.spawned_pool import SpawnedPool
from ..entry import EntryGuards
from ..inductor_warmup import (
    hold_probe,
    inductor_ready,
    probe_done,
    start_inductor_warmup,
    widen_probe,
)
from .job_modules import ALWAYS, defining_modules
from .piece_jobs import UnitCompiler, UnitJob, piece_names
from .worker_process import Launch, Worker, compile_and_report


@dataclasses.dataclass
class SpawnJob:
    """What one spawned worker receives (pickled): each unit on its own, so
    that a unit the worker cannot read leaves the others to compile."""

    # Each unit's piece names and its UnitJob, pickled by compat.graph_pickle.
    units: list[tuple[list[str], bytes]]
    config: CompilationConfig
    cache: CompileCache
    size: Any


def spawner(
    units: Sequence[UnitJob],
    config: CompilationConfig,
    cache: CompileCache,
    size: Any,
    pool: SpawnedPool,
) -> Launch:
    """Launch by taking a worker from ``pool`` (NOTE: [pre-started compile
    workers]): each worker gets its group of ``units`` pickled, and goes back
    to the pool once it has reported them."""
    modules = defining_modules(units)

    def launch(group: Sequence[UnitJob], nice: int | None, gated: bool) -> Worker:
        from ...compat import graph_pickle

        units = [(piece_names([u]), graph_pickle.dumps(u)) for u in group]
        data = pickle.dumps(SpawnJob(units, config, cache, size))
        header = {
            "sys_path": list(sys.path),
            "modules": modules,
            "names": piece_names(group),
            "state": global_state(),
            "bytes": len(data),
        }
        worker = pool.take()
        gate_read, gate_write = os.pipe() if gated else (-1, -1)
        # The pipe holds 64 KiB: the rest goes while the worker reads.
        threading.Thread(
            target=_send,
            args=(worker.process.stdin, header, data, gate_read),
            name=f"stitch-compile-job-{worker.pid}",
            daemon=True,
        ).start()
        return Worker(
            worker.pid,
            worker.reports,
            gate_write,
            lambda: ended_by(worker.process.wait()),
            lambda: pool.give_back(worker),
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


def _send(pipe: IO[bytes], header: dict[str, Any], data: bytes, gate: int) -> None:
    """Send a job; a gated one once its gate says ``c`` (else an empty job,
    which the worker answers at once: another replica's entry came)."""
    if gate >= 0:
        with contextlib.suppress(OSError):
            if os.read(gate, 1) != b"c":
                header, data = {**header, "names": [], "bytes": 0}, b""
        os.close(gate)
    try:
        pipe.write(json.dumps(header).encode() + b"\n")
        pipe.write(data)
        pipe.flush()
    except OSError:
        pass  # the worker is gone: its reader gives its pieces up


def main(argv: Sequence[str]) -> int:
    """A pooled worker: get ready, then compile and report one job after
    another from stdin (see above), until its end or the parent's."""
    parent, reports, ready = (int(a) for a in argv[:3])
    cpu, parent_death, preload = argv[3] == "cpu", argv[4] == "1", argv[6:]
    if argv[5] == "idle":
        take_priority(None)  # the pool set it too, before any thread started
    if parent_death:
        die_with_parent()
    if os.getppid() != parent:
        return 0  # the serving process is already gone
    die_with_parent(parent)  # and whatever the thread that spawned it does
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # NOTE: [a pre-started worker's probe waits for its imports], and NOTE:
    # [a pre-started worker probes narrow until its first job]: the thread
    # that watches stdin widens it when the job comes.
    hold_probe()
    threading.Thread(target=_widen_at_a_job, daemon=True).start()
    # NOTE: [pre-started compile workers]: what the first compile needs, loaded
    # before any job comes.  An import that fails here ends the worker.  Forked
    # from a fork server, all of it is loaded already, the build pool not yet
    # sized to this worker's environment.
    for module in (*ALWAYS, *preload):
        importlib.import_module(module)
    size_compile_threads_again()
    start_inductor_warmup(cpu=cpu)
    inductor_ready()
    warm_compile_pools(triton=not cpu)  # NOTE: [no subprocess pool for C++ kernels]
    # Ready once the probe ends; a job waiting on stdin is read before then
    # (NOTE: [a compile waits for the probe only where it asks]).
    threading.Thread(target=_say_ready, args=(ready,), daemon=True).start()
    stdin = sys.stdin.buffer
    with os.fdopen(reports, "w", buffering=1) as out:
        while line := stdin.readline():
            header = json.loads(line)
            data = stdin.read(header["bytes"])
            if header["names"]:
                _run_job(out, header, data)
            out.write(json.dumps({"done": True}) + "\n")
    return 0  # the pool let it go


def prepare_fork_server(args: Sequence[str]) -> int:
    """A fork server's preparation for workers (NOTE: [a fork server for
    compile workers], runtime/workers/fork_server.py): ``cpu|gpu MODULE...``.
    What each worker would import, done once; a module that fails to import
    here fails again in each worker, which says so and ends, as a spawned
    one does.  The server does not probe the ISA: a worker forked from it
    probes beside its first job, as a fresh one does (NOTE: [a compile waits
    for the probe only where it asks]).  A probe the server ran before it
    said it was ready held back every worker's first job by the whole probe:
    in bench/under_load.py at 32 layers on 2 cores, spawned workers started
    10.7 to 13.6 s after the backend call, against 1.9 to 2.8 s for forked
    ones in the same run.  The probe's records on disk make every later
    worker's probe short."""
    cpu, preload = args[0] == "cpu", args[1:]
    for module in (*ALWAYS, *preload):
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    inductor.import_inductor()  # the probe's imports with it; no thread starts
    if not cpu:
        _check_cuda_after_fork()
    return 0


def _check_cuda_after_fork() -> None:
    """Fail unless a child forked from this process can use CUDA: one is
    forked and makes a tensor on the device (a process that has asked CUDA
    for its devices, or whose Triton initialized the driver, forks children
    that cannot).  Where no device is visible there is nothing to check."""
    if not torch.cuda.is_available():  # NVML's answer here: initializes nothing
        return
    pid = os.fork()
    if pid == 0:
        try:
            torch.empty(1, device="cuda")
            torch.cuda.synchronize()
        except BaseException:  # noqa: BLE001 - the exit code says it
            os._exit(1)
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        raise RuntimeError(
            "a process forked from the fork server could not use CUDA: "
            "something it imported initialized CUDA"
        )


def _widen_at_a_job() -> None:
    """Widen the probe once a job waits on stdin (or stdin ends), though the
    imports may go on: nothing is read here."""
    with contextlib.suppress(OSError, ValueError):
        select.select([sys.stdin.fileno()], [], [])
    widen_probe()


def _say_ready(ready: int) -> None:
    probe_done()
    os.write(ready, b"r")
    os.close(ready)


def _run_job(out: IO[str], header: dict[str, Any], data: bytes) -> None:
    sys.path[:] = header["sys_path"]
    set_global_state(header["state"])
    try:
        for module in header["modules"]:
            _import(module)
        job = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - reported per piece
        _cannot_read(out, header["names"], exc)
        return
    for names, unit in job.units:
        _compile_unit(out, names, unit, job)


def _compile_unit(out: IO[str], names: list[str], data: bytes, job: SpawnJob) -> None:
    from ...compat import graph_pickle

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
    from stitch.runtime.pipeline.tiered.spawned_workers import main as _main

    code = _main(sys.argv[1:])
    # Every artifact is written and reported: exit now, as a forked worker
    # does, rather than wait for Inductor's build pools and probe threads to
    # wind down (they kept a core busy for seconds after the last report).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
