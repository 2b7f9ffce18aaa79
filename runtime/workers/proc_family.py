"""What Linux's ``/proc`` says of this process and of a compile worker's
family (the worker, its Inductor build pool, gcc), and the signals and cores
given to them: serving first's readings and levers (NOTE: [serving first],
serving_first.py; NOTE: [workers on the serving threads' spare cores])."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path


def run_delay(skip: int = 0) -> float:
    """Seconds this process's threads (but thread ``skip``, the controller's
    own) have waited for a core, in all."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if tid == str(skip):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
    return total / 1e9


def others_cpu() -> float:
    """Seconds of CPU this process has used, but for the calling thread's
    (the controller's own: its reads and signals must not look like a forward)."""
    return time.process_time() - time.thread_time()


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (the worker, its build pool, gcc); never
    this process."""
    members, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p <= 0 or p == os.getpid() or p in members:
            continue
        members.append(p)
        # A member that has exited (a gcc that just ended, a worker or the ISA
        # probe's process reaped) has no task folder left to list.
        with contextlib.suppress(OSError):
            for children in Path(f"/proc/{p}/task").glob("*/children"):
                with contextlib.suppress(OSError, ValueError):
                    todo += map(int, children.read_text().split())
    return members


def cpu_s(pid: int) -> float | None:
    """Seconds of CPU process ``pid`` has used, None once it is gone: its
    threads' (its CPU-time clock, to the nanosecond: a tick's rounding would
    be a tenth of a period) and its children's that it has waited for."""
    try:
        live = time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED, process
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return live + (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def place(pids: Iterable[int], cpus: set[int]) -> None:
    """Put every thread of every process in ``pids`` on ``cpus`` (a thread's
    affinity is its own: a process's threads are set one by one; threads and
    processes they start later inherit it).  Quiet where one has gone or the
    system refuses."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(tid), cpus)


class Ticks:
    """Every ``tick_s``: the cores the process's other threads used since the last."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.cpu, self.at = others_cpu(), time.monotonic()

    def next(self) -> tuple[float, float]:
        time.sleep(self.tick_s)
        cpu, now = others_cpu(), time.monotonic()
        using = (cpu - self.cpu) / max(now - self.at, 1e-6)
        self.cpu, self.at = cpu, now
        return using, now


_PR_SET_PDEATHSIG = 1


def die_with_parent_thread() -> None:
    """Ask the kernel to SIGKILL this process when the thread that forked or
    spawned it ends (Linux only; quiet elsewhere): a compile worker started
    by a serving process's main thread, or forked by a fork server."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
