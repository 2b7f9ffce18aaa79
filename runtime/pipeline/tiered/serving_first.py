"""Compile workers that give way to the process they compile for (NOTE:
[serving first]).

NOTE: [serving first]
A tiered start's workers compile while the process serves: an engine still
starting, forwards running.  As equals of the serving threads (niceness 0)
they took cores from it: vLLM's engine was ready 12.5 s later than Dynamo
alone on 2 cores.  A fixed lower priority helps the start but starves the
compile whenever the process is busy: at niceness 10 the last swap came at
9.6x the cold compile under forwards run back to back; and a process that
lowered its workers' priority cannot raise it again without CAP_SYS_NICE.

What the serving process loses is the time its threads wait for a core, the
"run delay" Linux counts per thread (``/proc/self/task/*/schedstat``, field 2).
A controller thread (:class:`ServingFirst`) reads it every ``PERIOD_S`` (its
own thread left out) and decides how many workers run; the others are paused
with SIGSTOP, their children (Inductor's build pool, gcc) with them, and go
on with SIGCONT.  Delay that others cause (another pytest worker, a neighbour
on the machine) is told apart from the workers': it is measured, as an
average, in the periods in which every worker is paused.  While the process
waits more than ``LIMIT`` (a tenth of a core) above that, one fewer worker
runs each period; while it waits less than half of it, one more runs every
``UP`` periods, until all do.  However busy the process, after ``HOLD``
periods with every worker paused one runs for a period, so the compile ends
(the workers keep at least a fifth of the time); paused workers change places
every ``ROTATE`` periods; every ``PROBE`` periods all are paused for one, to
measure the others' delay again.  Nothing is tuned by hand: an idle process
gives the workers every core within a few periods; a busy one keeps what it
needs.  What it cannot do is fill gaps shorter than a period: a process busy
half of every few milliseconds looks busy in every period (docs/performance.md,
"Serving first").

The controller runs only while there are workers (``watch``), in the process
that started them (a fork's child starts empty).  A worker that leaves is
dropped; one let go by its pool, and every worker when the process exits
and waits for its workers, is resumed first (``forget``, ``release``), so that
no stopped process is ever waited on.  ``$STITCH_SERVING_FIRST=0`` turns the
controller off (the workers then share the cores as equals at their niceness,
NOTE: [a compile worker's priority]); it exists to measure the difference.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

ENV = "STITCH_SERVING_FIRST"
# Seconds between two readings of the serving process's run delay.
PERIOD_S = 0.05
# The extra delay (core-seconds a second) the workers may cause before they pause.
LIMIT = 0.1
# Periods every worker stays paused, at most, before one runs again.
HOLD = 4
# Periods without a wait before one more paused worker runs.
UP = 2
# Every PROBE periods every worker is paused for a period, to measure the
# delay others cause; every ROTATE the paused workers change places.
PROBE = 100
ROTATE = 10
# Weight of a new reading in the averages (about a quarter of a second of readings).
ALPHA = 0.2


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


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


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (the worker, its build pool, gcc); never
    this process."""
    family, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p <= 0 or p == os.getpid() or p in family:
            continue
        family.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo += map(int, children.read_text().split())
    return family


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


class ServingFirst:
    """The controller of this process's compile workers (NOTE: [serving first])."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: list[int] = []  # the workers, those to run first first
        self._stopped: dict[int, list[int]] = {}  # a paused worker: its family
        self._thread: threading.Thread | None = None
        self._released = False

    def watch(self, pid: int) -> None:
        """Control worker ``pid`` from now until it leaves.  This process
        itself (a test's worker that compiles here) is never controlled."""
        if pid <= 0 or pid == os.getpid():
            return
        if not enabled() or not Path("/proc/self/task").is_dir():
            return
        with self._lock:
            if self._released or pid in self._order:
                return
            self._order.append(pid)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="stitch-serving-first", daemon=True
                )
                self._thread.start()

    def forget(self, pid: int) -> None:
        """Stop controlling ``pid``, resumed first (its pool let it go)."""
        with self._lock:
            if pid in self._order:
                self._order.remove(pid)
            self._go_on(pid)

    def release(self) -> None:
        """Resume every worker and control none from now on (the process is
        exiting and waits for them)."""
        with self._lock:
            self._released = True
            for pid in list(self._stopped):
                self._go_on(pid)
            self._order.clear()

    @property
    def paused(self) -> bool:
        return bool(self._stopped)

    def _go_on(self, pid: int) -> None:
        family = self._stopped.pop(pid, None)
        if family is not None:
            _signal(sorted(set(family) | set(_family(pid))), signal.SIGCONT)

    def _pause(self, pid: int) -> None:
        if pid not in self._stopped:
            self._stopped[pid] = _family(pid)
            _signal(self._stopped[pid], signal.SIGSTOP)

    def _run_first(self, k: int) -> None:
        """Let the first ``k`` workers run and pause the others."""
        for i, pid in enumerate(self._order):
            if i < k:
                self._go_on(pid)
            else:
                self._pause(pid)

    def _run(self) -> None:
        baseline = 0.0  # the delay with every worker paused (others' doing)
        me = threading.get_native_id()
        last, at = run_delay(me), time.monotonic()
        k = -1  # how many workers run; -1: all, not yet decided
        idle_periods = at_zero = 0
        period = 0
        while True:
            time.sleep(PERIOD_S)
            now, delay = time.monotonic(), run_delay(me)
            rate = (delay - last) / max(now - at, 1e-6)
            last, at = delay, now
            period += 1
            with self._lock:
                for pid in [p for p in self._order if not _alive(p)]:
                    self._order.remove(pid)
                    # Its children, paused with it, must not stay paused.
                    _signal(self._stopped.pop(pid, []), signal.SIGCONT)
                n = len(self._order)
                if not n or self._released:
                    self._thread = None
                    return
                if k < 0 or k > n:
                    k = n
                if k == 0:
                    # Every worker paused: what is left is others' doing.
                    baseline += ALPHA * (rate - baseline)
                excess = rate - baseline
                if k > 0 and excess > LIMIT:
                    k -= 1  # they make this process wait: one fewer runs
                    idle_periods = 0
                elif excess < LIMIT / 2:
                    idle_periods += 1
                    if idle_periods >= UP and k < n:
                        k += 1  # no wait: one more runs
                        idle_periods = 0
                at_zero = at_zero + 1 if k == 0 else 0
                if at_zero > HOLD:
                    k = 1  # a share for the compile, whatever the load
                    at_zero = 0
                if period % PROBE == 0 and k > 0:
                    k = 0  # measure the others' delay again, now and then
                if period % ROTATE == 0 and 0 < k < n:
                    self._order = self._order[1:] + self._order[:1]
                self._run_first(k)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


_CONTROLLER = ServingFirst()


def controller() -> ServingFirst:
    """This process's controller (NOTE: [serving first])."""
    return _CONTROLLER


def _forget_all_in_child() -> None:
    # A forked worker starts with no workers of its own to control.
    global _CONTROLLER
    _CONTROLLER = ServingFirst()


os.register_at_fork(after_in_child=_forget_all_in_child)
