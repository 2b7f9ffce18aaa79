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
periods in which the workers ran less than half the time one runs for a
period, so the compile ends (the workers keep about a sixth of the time, a
fifth with the learning periods).  That count once restarted whenever a
calm period let one more worker run at its end, which the next forward's
start undid a tick later: a worker ran 1 to 5% of the time, and on 2 cores a
tiered start under forwards back to back never swapped in 360 s.  Paused
workers change places every ``ROTATE`` periods; every ``PROBE`` periods
all are paused for one, to measure the others' delay again.

A period is too long for a forward of a few milliseconds: the controller saw
the wait only after the forward had ended, and then kept the workers paused
for the calm periods that followed.  A process busy a tenth of the time kept
them paused a third of it (docs/performance.md, "On a quiet machine").  So,
between two readings, every ``TICK_S`` the controller also reads the CPU
time the process's other threads used (one call, ``others_cpu``): where
running workers have made a busy process wait (``harmful``, learned in the
periods in which workers ran all through a busy stretch), every worker
pauses in the tick in which a forward begins (the process uses more than
``BUSY`` of a core), and they all run again after ``CALM`` ticks in which it
is idle (less than ``IDLE``).  Harm is learned (:class:`~.worker_cost.WorkerCost`) in the first
busy period after the first (a probe) and again every ``LEARN`` periods
(``RELEARN`` where they were found to make it wait): a period in which every
worker runs throughout, with no pause at a forward's start.  It is the delay
above others' then, but never more than the CPU time the workers used: a
worker that ran t seconds kept a thread of the process from a core t seconds
at most.  Others' delay is a few seconds old by then, and under a neighbour
that computes in bursts (another pytest worker on 2 cores) a reading of a
twentieth of a second moves by a third of a core: workers that slept were
judged harmful by that alone, and paused 28 samples of 40.  Only a learning
period judges.  Where workers do not make the process wait (more cores than
both need), they are not paused at all, nor is one fewer let run for a
reading above others' delay (that reading, with harmless workers, is a
neighbour's).  A process busy all the time used to measure nothing: its
learning periods began with every worker paused, so it kept them paused but
for the compile's share (on an H200's 16 cores, forwards back to back took
the 3-layer example's last swap to 3.04x the cold compile).  What it cannot
do is fill gaps shorter than a few ticks: a process busy half of every few
milliseconds looks busy in every tick (docs/performance.md, "Serving
first").

A worker starts in a process group of its own (``own_group``; a forked one
calls ``setpgid``), its build pool and gcc with it.  A serving process killed
while its workers are paused leaves that group orphaned with stopped members,
and the kernel then sends the group SIGHUP and SIGCONT: a paused worker, or
its pool after it, never waits stopped for ever (it did: an Inductor build
pool stayed stopped, orphaned, after its serving process ended).

The controller runs only while there are workers (``watch``), in the process
that started them (a fork's child starts empty); a pooled worker idle
between jobs is not one (NOTE: [an idle worker is not watched],
workers/spawned_pool.py).  A worker that leaves is dropped; one let go by its pool,
and every worker when the process exits and waits for its workers, is
resumed first (``forget``, ``release``), so that no stopped process is ever
waited on.  ``$STITCH_SERVING_FIRST=0`` turns the controller off (the workers
then share the cores as equals at their niceness, NOTE: [a compile worker's
priority]); it exists to measure the difference.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .compile_share import CompileShare
from .proc_family import Ticks, place, run_delay
from .proc_family import alive as _alive
from .proc_family import family as _family
from .proc_family import signal_all as _signal
from .worker_cost import LIMIT, WorkerCost
from .worker_cpus import spare_cpus

ENV = "STITCH_SERVING_FIRST"
# Seconds between two readings of the serving process's run delay.
PERIOD_S = 0.05
# Seconds between two looks at the CPU time the process uses (cheap: one call).
TICK_S = 0.005
PERIOD_TICKS = round(PERIOD_S / TICK_S)
# Cores the process uses: above BUSY it is busy (a forward runs), below IDLE idle.
BUSY = 0.2
IDLE = 0.1
# Idle ticks in a row before every worker runs again.
CALM = 2
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


def own_group() -> dict[str, Any]:
    """``subprocess.Popen``'s arguments that start a worker in a process group
    of its own (NOTE: [serving first]); a forked worker calls ``os.setpgid(0, 0)``."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}


class ServingFirst:
    """The controller of this process's compile workers (NOTE: [serving first])."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: list[int] = []  # the workers, those to run first first
        self._stopped: dict[int, list[int]] = {}  # a paused worker: its family
        self._thread: threading.Thread | None = None
        self._released = False
        self._wide: set[int] | None = None  # where it moves workers between cores
        # What the workers are owed of a busy process's time (NOTE: [the
        # compile's share]); forwards wait at its gate (``admit``).
        self.share = CompileShare()

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

    def admit(self, ready: Callable[[], bool] | None = None) -> None:
        """Where an uncompiled piece's call begins: wait while the workers are
        owed too much of this process's time (NOTE: [the compile's share]), or
        until ``ready()``.  Only while this controller runs: nothing else pays
        the share back."""
        if self._thread is not None:
            self.share.admit(ready)

    def release(self) -> None:
        """Resume every worker, on every core it may use, and control none from
        now on (the process is exiting and waits for them)."""
        with self._lock:
            self._released = True
            self.share.release()
            for pid in list(self._stopped):
                self._go_on(pid)
            if self._wide is not None:
                place((q for p in self._order for q in _family(p)), self._wide)
            self._order.clear()

    @property
    def paused(self) -> bool:
        return bool(self._stopped)

    @property
    def workers(self) -> list[int]:
        """The pids it controls now."""
        with self._lock:
            return list(self._order)

    @property
    def running(self) -> bool:
        """Whether its thread runs (it ends once it controls no worker)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _go_on(self, pid: int) -> None:
        # Only those it paused: a process stopped cannot start another, and
        # one started before its parent's stop was never paused.
        _signal(self._stopped.pop(pid, []), signal.SIGCONT)

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

    def _drop_gone(self) -> bool:
        """Stop controlling the workers that left; whether any did."""
        gone = [p for p in self._order if not _alive(p)]
        for pid in gone:
            self._order.remove(pid)
            # Its children, paused with it, must not stay paused.
            _signal(self._stopped.pop(pid, []), signal.SIGCONT)
        return bool(gone)

    def _end(self) -> None:
        """The thread ends (no worker left): nothing is owed any more."""
        self._thread = None
        self.share.release()

    def _run(self) -> None:
        wide, spare = spare_cpus()
        if spare:
            self._run_spare(wide, spare)
        else:
            self._run_pausing()

    def _run_pausing(self) -> None:
        me = threading.get_native_id()
        baseline = -1.0  # the delay with every worker paused (others' doing)
        ticks = Ticks(TICK_S)
        last_delay, at = run_delay(me), ticks.at
        k = 0  # how many workers run: none in the first period, a probe
        harm = WorkerCost(lambda: list(self._order))
        fixed, learning = True, False  # a share or a probe; harm measured
        period_at = at
        idle_periods = at_zero = idle_ticks = busy_ticks = ran = 0
        period = tick = 0
        low = high = 0  # the fewest and most workers that ran this period
        while True:
            using, now = ticks.next()
            tick += 1
            with self._lock:
                n = len(self._order)
                if not n or self._released:
                    return self._end()
                if k < 0 or k > n:
                    k = low = high = n
                self.share.ran_until(now, k / n)  # NOTE: [the compile's share]
                busy_ticks += using > BUSY
                idle_ticks = idle_ticks + 1 if using < IDLE else 0
                if not fixed:
                    if k > 0 and harm.harmful and not learning and using > BUSY:
                        k = 0  # a forward begins: it must not wait
                    elif k < n and idle_ticks >= CALM:
                        k = n  # nothing to wait for: every worker runs
                        at_zero = 0
                low, high, ran = min(low, k), max(high, k), ran + (k > 0)
                if tick % PERIOD_TICKS:
                    self._run_first(k)
                    continue
                if self._drop_gone():
                    low = 0  # not every worker ran all through
                n = len(self._order)
                k = min(k, n)
                delay = run_delay(me)
                rate = (delay - last_delay) / max(now - at, 1e-6)
                last_delay, at = delay, now
                period += 1
                if high == 0:
                    # Every worker paused: what is left is others' doing.
                    baseline += (1 if baseline < 0 else ALPHA) * (rate - baseline)
                excess = rate - baseline  # the first period, a probe, set baseline
                harm.ended(excess, now - period_at, busy_ticks >= CALM, low)
                period_at = now
                if k > 0 and harm.harmful and excess > LIMIT and idle_ticks < CALM:
                    k -= 1  # they make this process wait: one fewer runs
                    idle_periods = 0
                elif excess < LIMIT / 2:
                    idle_periods += 1
                    if idle_periods >= UP and k < n:
                        k += 1  # no wait: one more runs
                        idle_periods = 0
                # Periods in which the workers ran less than half the time.
                at_zero = at_zero + 1 if 2 * ran < PERIOD_TICKS else 0
                fixed = False
                if at_zero > HOLD:
                    # The compile's share, whatever the load.
                    k, at_zero, fixed = 1, 0, True
                if period % PROBE == 0 and k > 0:
                    k, fixed = 0, True  # a probe: the others' delay, now and then
                # Every worker runs all through a period: what they cost.
                if learning := harm.due() and not fixed:
                    k = n
                    harm.begin()
                    # Its readings take a tenth of a second beside a busy
                    # serving thread: the period starts after them.
                    last_delay, at = run_delay(me), time.monotonic()
                    period_at = at
                if period % ROTATE == 0 and 0 < k < n:
                    self._order = self._order[1:] + self._order[:1]
                low = high = k
                busy_ticks = ran = 0
                self._run_first(k)

    def _run_spare(self, wide: set[int], spare: set[int]) -> None:
        """No worker paused: every one on ``spare`` while the process is busy,
        on ``wide`` once it is idle (NOTE: [workers on the serving threads'
        spare cores], worker_cpus.py)."""
        ticks = Ticks(TICK_S)
        placed = self._wide = wide
        idle_ticks = tick = 0
        while True:
            using, _ = ticks.next()
            tick += 1
            with self._lock:
                if tick % PERIOD_TICKS == 0:
                    self._drop_gone()
                if not self._order or self._released:
                    return self._end()
                idle_ticks = idle_ticks + 1 if using < IDLE else 0
                want = placed
                if using > BUSY:
                    want = spare
                elif idle_ticks >= CALM:
                    want = wide
                # Narrowed, again every period: a worker started since.
                if want != placed or (want is spare and tick % PERIOD_TICKS == 0):
                    placed = want
                    place((q for p in self._order for q in _family(p)), want)


_CONTROLLER = ServingFirst()


def controller() -> ServingFirst:
    """This process's controller (NOTE: [serving first])."""
    return _CONTROLLER


def _forget_all_in_child() -> None:
    # A forked worker starts with no workers of its own to control.
    global _CONTROLLER
    _CONTROLLER = ServingFirst()


os.register_at_fork(after_in_child=_forget_all_in_child)
