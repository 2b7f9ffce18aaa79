"""The cores a compile worker runs on (NOTE: [the cores a compile worker runs on]).

NOTE: [the cores a compile worker runs on]
A process starts on the cores the thread that started it may run on.  vLLM's
CPU worker pins itself, every thread, to the cores its OpenMP threads compute
on (on 2 cores: core 0, the other reserved for the engine's scheduler and its
front end); Intel's OpenMP with ``KMP_AFFINITY`` pins each of its threads, the
main one with them.  A compile worker forked or spawned there ran on the
serving threads' cores, its Inductor build pool and gcc with it: on 2 cores
vLLM's engine shared core 0 with the compile while core 1 idled, and its
last swap came 38 s into the backend call with requests a tenth of the time
(34.5 s on both cores), 113 s with requests back to back (97 s).

So a worker is given every core that any thread of the serving process may
run on, and the cores an engine's integration adds (:func:`allow`; vLLM's
backend adds those of the engine process that started its worker,
:func:`allow_parents`); ``$STITCH_COMPILE_CPUS`` (a list as ``taskset -c``
reads it, ``0-3,8``) names them instead.  The kernel keeps every process within
its cgroup's cpuset whatever it asks for.  Serving first (NOTE: [serving
first]) still pauses workers that make the serving threads wait; on a core of
their own they do not, and run through.  Inductor's build pool in a worker is
sized to these cores (NOTE: [a worker's share of the build pools]).

NOTE: [workers on the serving threads' spare cores]
Serving first pauses workers while they make the serving threads wait.  But
where every serving thread is pinned to some of the workers' cores (vLLM's
CPU worker, on 2 cores: all on core 0), the other cores are spare: a worker
there takes no core from a serving thread, and pausing it only delays the
compile.  On vLLM's engine with requests a tenth of the time, the worker
stood paused through the engine's start (about 6 s) and at every request,
and the last swap came 25.3 s into the backend call, 1.60x the cold compile.
So where :func:`spare_cpus` finds spare cores, the controller pauses no
worker: in a tick in which the process is busy (a forward, the engine's
start) it puts every worker, its build pool and gcc on the spare cores, and
after ``CALM`` idle ticks back on every core it may use
(``ServingFirst._run_spare``; the cores a thread may use are its own, so
each thread of the family is moved, ``proc_family.place``).  Where no
thread is pinned there is no spare core, and serving first is as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

log = logging.getLogger("stitch")

ENV = "STITCH_COMPILE_CPUS"

_added: set[int] = set()
_warned: set[str] = set()


def parse_cpus(text: str) -> set[int]:
    """The cores ``text`` lists (``0-3,8``); ValueError naming the part it
    cannot read."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(f"{part!r} is not a core nor a range of cores") from None
        if low < 0 or high < low:
            raise ValueError(f"{part!r} is not a range of cores")
        cpus.update(range(low, high + 1))
    return cpus


def allow(cpus: set[int] | frozenset[int]) -> None:
    """Let this process's compile workers run on ``cpus`` too."""
    _added.update(cpus)


def allow_parents() -> None:
    """Let this process's workers run on the cores of the Python process that
    started it (vLLM's engine, which starts its CPU worker and then sees it
    pin itself to fewer cores); a parent that is not Python (a shell that ran
    ``taskset``) adds nothing."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        if os.path.realpath(f"/proc/{parent}/exe") == os.path.realpath(sys.executable):
            allow(os.sched_getaffinity(parent))


def worker_cpus() -> set[int]:
    """The cores this process's compile workers run on (empty: unknown here)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        try:
            return parse_cpus(text)
        except ValueError as exc:
            if text not in _warned:
                _warned.add(text)
                log.warning(
                    "stitch: $%s=%r: %s; compile workers run on this process's cores",
                    ENV,
                    text,
                    exc,
                )
    cpus = set(_added)
    try:
        cpus |= os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set()
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError, ValueError):
                cpus |= os.sched_getaffinity(int(tid))
    return cpus


def serving_cpus() -> set[int]:
    """The cores this process's threads may run on, Stitch's own threads left
    out (the ISA probe's takes the workers' cores); empty where unknown."""
    own = {t.native_id for t in threading.enumerate() if t.name.startswith("stitch")}
    cpus: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError, ValueError):
                if int(tid) not in own:
                    cpus |= os.sched_getaffinity(int(tid))
    return cpus


def spare_cpus() -> tuple[set[int], set[int]]:
    """The cores this process's workers run on, and those of them that no
    serving thread may run on (NOTE: [workers on the serving threads' spare
    cores]; empty: none, or unknown)."""
    wide, serving = worker_cpus(), serving_cpus()
    return wide, (wide - serving if wide and serving else set())


def cores(cpus: set[int] | None = None) -> int:
    """How many cores compile workers share: ``cpus``, by default this
    process's workers' (:func:`worker_cpus`); the machine's where unknown."""
    return len(worker_cpus() if cpus is None else cpus) or os.cpu_count() or 1


def take_cpus(cpus: set[int], pid: int = 0) -> bool:
    """Put process ``pid`` (0: this one) on ``cpus``; whether that widened
    where it may run.  Quiet where the system refuses (the cores are outside
    its cpuset): it keeps the cores it has."""
    if not cpus:
        return False
    try:
        before = os.sched_getaffinity(pid)
        if before == cpus:
            return False
        os.sched_setaffinity(pid, cpus)
        return not os.sched_getaffinity(pid) <= before
    except (AttributeError, OSError, ValueError):
        return False


def default_workers(jobs: int) -> int:
    """One compile worker per two cores, at most four and at most ``jobs``."""
    return max(1, min(4, cores() // 2, jobs))
