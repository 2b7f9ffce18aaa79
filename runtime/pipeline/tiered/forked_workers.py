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
from collections.abc import Sequence
from typing import Any

from ...compat.inductor import forget_compile_pools, size_compile_threads_again
from ...workers.priority import take_priority
from ...workers.proc_family import die_with_parent, ended_status, parent_to_watch
from ...workers.start_method import forget_the_parents_exit
from ...workers.worker_cpus import take_cpus, worker_cpus
from ..inductor_warmup import forget_probe
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
            os.setpgid(0, 0)  # NOTE: [serving first]: a group of its own
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


def _work(
    names: list[str],
    fd: int,
    gate: int,
    compile_one: CompileOne,
    shape_env: Any,
    start: _Start,
) -> None:
    code = 0
    gc.freeze()  # NOTE: [a forked worker's inherited objects are frozen]
    try:
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
