"""Forked compile workers (NOTE: [forked or spawned compile workers],
compile_workers.py): each is a fork of the serving process inside the backend
call, holding Dynamo's tracing context, the fake inputs and the pieces, so
nothing is sent to it; it compiles its pieces and reports each on a pipe, as
a spawned worker does (``spawned_workers.py``)."""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ...compat.inductor import forget_compile_pools, size_compile_threads_again
from ...workers.priority import take_priority
from ...workers.proc_family import die_with_parent, ended_status, parent_to_watch
from ...workers.start_method import forget_the_parents_exit
from ...workers.worker_cpus import take_cpus, worker_cpus
from ..inductor_warmup import forget_probe, probe_isa
from .piece_jobs import UnitJob, piece_names
from .worker_process import CompileOne, Launch, Worker, compile_and_report


def forker(compile_one: CompileOne, shape_env: Any) -> Launch:
    """Launch by ``fork``: the worker holds this process's state, and compiles
    each piece with ``compile_one``."""

    def launch(group: Sequence[UnitJob], nice: int | None, gated: bool) -> Worker:
        names = piece_names(group)
        read_fd, write_fd = os.pipe()
        gate_read, gate_write = os.pipe() if gated else (-1, -1)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = parent_to_watch()
        cpus = worker_cpus()  # the serving process's threads': read before the fork
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(read_fd)
            if gated:
                os.close(gate_write)
            start = _Start(nice, parent, cpus)
            _work(names, write_fd, gate_read, compile_one, shape_env, start)
        os.close(write_fd)
        if gated:
            os.close(gate_read)

        def ended() -> str:
            return ended_status(os.waitpid(pid, 0)[1])

        return Worker(pid, read_fd, gate_write, ended)

    return launch


# NOTE: [a forked worker's inherited objects are frozen]
# A forked worker holds every object of the serving process: torch, Dynamo's
# tracing context, the graph and its pieces.  Each of its full collections
# walked them all, and wrote to each one's header as it went, so the pages the
# fork had left shared were copied one by one.  At 32 layers (the example
# llama, 2 cores, empty caches) a worker's two full collections took 0.65 to
# 0.76 s of its compile.  The worker freezes what it inherited before it
# does anything (``gc.freeze``: a move of the collector's lists, nothing is
# walked): its collections walk only what it makes, and its three full ones
# took 0.12 to 0.17 s in the same runs (docs/performance.md, "Only the ISA
# Inductor picks").  What is frozen is never collected, and need not be: the
# worker exits once its pieces are reported, and the serving process, which
# keeps collecting its own objects, freezes nothing.


@dataclasses.dataclass(frozen=True)
class _Start:
    """How a forked worker starts: its priority, the process it dies with, its cores."""

    nice: int | None
    parent: int | None
    cpus: set[int]


def _begin(start: _Start) -> None:
    """A forked child's start: a process of its own, with the serving
    process's workers' priority and cores, that dies with it."""
    gc.freeze()  # NOTE: [a forked worker's inherited objects are frozen]
    os.setpgid(0, 0)  # NOTE: [serving first]: a group of its own
    die_with_parent(start.parent)
    forget_the_parents_exit()  # NOTE: [a worker forked while its parent exits]
    forget_compile_pools()  # NOTE: [Inductor's pools in a forked process]
    forget_probe()  # NOTE: [a worker forked beside a probe]
    # NOTE: [a compile worker's priority]
    take_priority(start.nice)
    # NOTE: [the cores a compile worker runs on]
    if take_cpus(start.cpus):
        size_compile_threads_again()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _work(
    names: list[str],
    fd: int,
    gate: int,
    compile_one: CompileOne,
    shape_env: Any,
    start: _Start,
) -> None:
    code = 0
    try:
        _begin(start)
        if gate >= 0 and os.read(gate, 1) != b"c":
            os._exit(0)  # another replica's entry was installed (or the parent died)
        with os.fdopen(fd, "w", buffering=1) as out:
            compile_and_report(names, out, compile_one, shape_env)
    except BaseException:  # noqa: BLE001 - the parent sees the pipe close
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def fork_probe(nice: int | None) -> int | None:
    """Fork a process that probes the CPU's vector ISA, as a compile worker
    would, and exits; its pid, watched by serving first (None: not forked).

    NOTE: [a forked tier probes as its build begins]
    A forked worker is forked once the stitching is built (1.6 to 2.4 s after
    the backend call at 32 layers on 2 cores), and began the ISA probe then,
    with its first piece (NOTE: [Inductor warm-up overlaps the split]), where
    a cold call begins it at its start: the probe, which the first piece's
    C++ waits for, ended 4.3 to 6.0 s after the backend call, against 3.1 to
    4.8 s in a cold call.  Now a cold forked tier's build forks a process for
    the probe as it begins, and the worker, forked later, finds the pick
    answered (its record: NOTE: [the ISA probe's answers remembered]) or, for
    a check still in flight, waits on Inductor's lock file for its build and
    then loads it (NOTE: [a worker forked beside a probe], inductor_warmup.py):
    nothing is built twice.  The probe process has a group of its own, which
    serving first watches and pauses, its compilers with it, as it does a
    worker's (NOTE: [serving first]).

    A thread of the serving process was tried first.  Its imports held the
    interpreter beside the forwards, and serving first cannot pause its
    compilers: under a light load at 32 layers each run served two forwards
    during the compile, each 0.2 to 0.5 s of its own, where the code before
    served five to seven; with the process, six and ten (54 and 61 ms by the
    median).  Probing from the backend call had also been tried
    when the probe checked every candidate, and not kept (docs/performance.md,
    "The ISA probe from a forked tier's backend call"): the worker then
    checked the candidates after the pick itself.  The probe now ends at the
    pick (NOTE: [only the ISA Inductor picks is probed]), and the worker has
    nothing left to check.  The example llama at 32 layers, ``bench/under_load.py
    --paired``, two rounds each way alternating (docs/performance.md, "A
    forked tier's probe from its build's start"): the last swap at 0.90x to
    1.16x the paired cold compile with it, 1.00x to 1.33x without.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    start = _Start(nice, parent_to_watch(), worker_cpus())
    try:
        pid = os.fork()
    except OSError:
        return None  # the worker probes, as before
    if pid == 0:  # the probe: never returns
        code = 0
        try:
            _begin(start)
            probe_isa()
        except BaseException:  # noqa: BLE001 - the worker probes what is left
            code = 1
        finally:
            os._exit(code)
    threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True).start()
    return pid
