"""Spawned compile workers started before they are needed and kept between
backend calls (NOTE: [pre-started compile workers]).

NOTE: [pre-started compile workers]
A spawned worker pays for a fresh interpreter, torch's and Inductor's imports,
the vector ISA probe and Inductor's build pools: seconds that a tiered
start used to wait for after the backend call began.
A :class:`SpawnedPool` starts its workers when the backend is made (where
they will be spawned: ``pipeline/tiered/pool_choice.likely_spawned``) or, at
the latest, when a cold backend call begins, each forked by the pool's fork
server once that has imported and probed (NOTE: [a fork server for compile
workers]; ``workers/pool_server.py``), or, without one, each a fresh
interpreter, and each waits on its stdin for a job once its imports are done
(its ISA probe may still run beside that job: NOTE: [a compile waits for the
probe only where it asks]).  A job is whatever the worker's module reads (for
a tiered start, a group of pieces: ``pipeline/tiered/spawned_workers.py``);
when it is reported in full the worker goes back to the pool, for the next backend call (vLLM and
transformers' engine compile several graphs).  The pool, not the worker,
decides when an idle worker leaves (``idle_s`` after its last job it closes the
worker's stdin), so a job is never sent to a worker that chose to exit.  A
worker also leaves at the end of its stdin and when its parent is gone (it
polls its parent pid, and where the pool runs on the main thread the kernel
kills it with its parent), so none outlives the serving process.  A worker
found dead when a job comes (killed while idle, or its imports failed) is
named in one warning and replaced; one that dies during a job gives its
pieces up through its reader, as a forked worker's does.

NOTE: [an idle worker is not watched]
Serving first (workers/serving_first.py) controls a pooled worker while it starts
(its imports and the ISA probe compete with the engine's start) and while it
compiles a job, and never while it waits, ready, for one: that wait costs no
core, and the controller, which wakes every tick while it controls any
worker, ends once it controls none.  A worker idle in the pool had kept it
running for the pool's two minutes after the last swap, pausing and resuming
a sleeping family at every forward; unwatched, that family used no core over
the forwards that followed (docs/performance.md, "Idle workers unwatched":
what it did to a forward's time was below the 2-core machine's noise).

NOTE: [a process that cannot start compile workers]
A sandbox may forbid new processes (seccomp refusing fork and clone with
EPERM, a process limit with EAGAIN), and ``$STITCH_COMPILE_START=fork`` may
name a start the process cannot use (it has initialized CUDA).  Stitch's
workers start with ``os.fork`` or ``subprocess``, never through
``multiprocessing``, so its start method, set by the caller or not, does not
choose them.  Where a worker cannot be started, the pool remembers why
(:meth:`SpawnedPool.refuse`, for forked workers too) and says it in one
warning; that call's pieces compile in this process, as a cold start compiles
them (``pipeline/tiered/compile_workers.Launched.serve``, or before the split
where the pool failed to start), and every later graph of the backend
compiles so without trying again (``pipeline/tiered/deferred.tiered_off``).  Never a crash, never a wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from .pool_server import PoolServer, worker_env
from .pooled_worker import PooledWorker
from .priority import take_priority
from .proc_family import ended_by
from .serving_first import controller, own_group
from .worker_cpus import cores, take_cpus, worker_cpus

log = logging.getLogger("stitch")

# Seconds an idle worker waits for another job before the pool lets it go.
IDLE_S = 120.0


class SpawnedPool:
    """Spawned compile workers, started ahead and reused (NOTE: [pre-started
    compile workers]).  ``count`` workers are started by :meth:`start`, each
    running ``python -m module``; ``preload`` names modules each imports at its
    start, beside Stitch's."""

    def __init__(
        self,
        count: int,
        nice: int | None = 0,
        *,
        preload: Sequence[str] = (),
        idle_s: float = IDLE_S,
        module: str,
    ) -> None:
        self.count = count
        self.module = module
        self.nice = nice
        self.preload = tuple(preload)
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._idle: list[PooledWorker] = []
        self._starting = 0  # workers being started outside the lock
        self._taken_fresh = 0  # of those, started fresh by take() instead
        self._cpu: bool | None = None  # probe the ISA: set by the first start
        # NOTE: [a fork server for compile workers] (runtime/workers/fork_server.py)
        self._server = PoolServer(count, nice, self.preload, module=module)
        # Why no compile worker can be started in this process, once one
        # failed to (NOTE: [a process that cannot start compile workers]).
        self.cannot_start: str | None = None

    def start(self, cpu: bool) -> None:
        """Have ``count`` workers idle or starting (for graphs on the CPU,
        ``cpu``: they probe its vector ISA).  Where a fork server starts them,
        a thread waits for it: this returns at once."""
        with self._lock:
            if self._cpu is None:
                self._cpu = cpu
            self._idle = [w for w in self._idle if self._alive(w)]
            missing = self.count - len(self._idle) - self._starting
            if missing <= 0 or self.cannot_start is not None:
                return
            self._starting += missing
        if self._server.get(cpu) is not None:
            threading.Thread(
                target=self._start_idle,
                args=(missing,),
                name="stitch-pool-start",
                daemon=True,
            ).start()
        else:
            self._start_idle(missing)

    def _start_idle(self, count: int) -> None:
        server = self._server.get(self._cpu or False)
        if server is not None:
            server.wait_ready()  # a job meanwhile starts fresh (take())
        for _ in range(count):
            worker = None
            try:
                with self._lock:
                    if self._taken_fresh:  # take() started it instead
                        self._taken_fresh -= 1
                        continue
                worker = self._spawn()
            except OSError as exc:
                self.refuse(f"{type(exc).__name__}: {exc}")
            finally:
                with self._changed:
                    self._starting -= 1
                    if not self._starting:
                        self._taken_fresh = 0
                    if worker is not None:
                        self._idle.append(worker)
                    self._changed.notify_all()

    def refuse(self, why: str) -> bool:
        """No compile worker can be started in this process, because ``why``:
        said in one warning, the first time (NOTE: [a process that cannot
        start compile workers]); whether this was the first time."""
        if self.cannot_start is not None:
            return False
        self.cannot_start = why
        log.warning(
            "stitch: compile workers cannot be started in this process (%s); "
            "pieces compile in this process before the backend call returns, "
            "as without a tiered start",
            why,
        )
        return True

    def take(self) -> PooledWorker:
        """An idle worker for one job: one being forked, else a new one.

        NOTE: [a job never waits for the fork server]
        The pool's first workers are forked once its fork server has
        imported.  A job that finds none idle while the server still imports
        does not wait for it: it gets a fresh interpreter at once, which reads
        the job when its own imports are done (one fewer is forked).  Waiting
        had held the backend call's build, and every later backend call
        behind it: the transformers Llama's second token came 24.7 to 31.9 s
        after ``torch.compile`` with spawned workers, 9.8 to 13.0 s forked.
        """
        with self._changed:
            while True:
                while self._idle:
                    worker = self._idle.pop(0)
                    if self._alive(worker):
                        worker.working = True  # watched from its launch
                        return worker  # (compile_workers.py)
                fresh = not self._server.ready()
                if self._starting <= self._taken_fresh:
                    break
                if fresh:
                    self._taken_fresh += 1
                    break
                self._changed.wait()  # forks from a ready server: milliseconds
        worker = self._spawn(fresh=fresh)
        with self._lock:
            worker.working = True
        return worker

    @staticmethod
    def _alive(worker: PooledWorker) -> bool:
        """Whether an idle ``worker`` is alive; if not, one warning names how
        it ended (it is replaced)."""
        if worker.alive():
            return True
        how = ended_by(worker.process.returncode).replace(" before compiling it", "")
        log.warning(
            "stitch: a pre-started compile worker (pid %d) %s while idle; "
            "starting another",
            worker.pid,
            how,
        )
        worker.close()
        return False

    def give_back(self, worker: PooledWorker) -> None:
        """``worker`` reported its job in full: idle until the next, or until
        ``idle_s`` passes."""
        worker.idle_since = time.monotonic()
        with self._lock:
            worker.working = False
            # NOTE: [an idle worker is not watched]; one still probing the ISA
            # is forgotten when it says it is ready.
            if worker.ready.is_set():
                controller().forget(worker.pid)
            self._idle.append(worker)
        timer = threading.Timer(self.idle_s, self._let_idle_go)
        timer.daemon = True
        timer.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether every idle worker, and every one being started, is ready
        (or dead) within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            if not self._changed.wait_for(lambda: not self._starting, timeout):
                return False
            workers = list(self._idle)
        for w in workers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not w.ready.wait(left):
                return False
        return True

    def idle_pids(self) -> list[int]:
        """The idle workers' pids, once those being started are."""
        with self._changed:
            self._changed.wait_for(lambda: not self._starting, 600.0)
            return [w.pid for w in self._idle]

    def close(self) -> None:
        """Let every idle worker go (those at work go when their job ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()
        self._server.close()  # it leaves once the workers at work have

    def _let_idle_go(self) -> None:
        now = time.monotonic()
        with self._lock:
            going = [w for w in self._idle if now - w.idle_since >= self.idle_s]
            self._idle = [w for w in self._idle if w not in going]
        for worker in going:
            worker.close()

    def _spawn(self, fresh: bool = False) -> PooledWorker:
        """Start one worker: forked by the fork server where there is one
        (NOTE: [a fork server for compile workers]), else a fresh interpreter
        that imports while we go on."""
        reports_read, reports_write = os.pipe()
        ready_read, ready_write = os.pipe()
        passed = (reports_write, ready_write)
        # NOTE: [pre-started compile workers]: the kernel's parent-death signal
        # follows the thread that spawned, so it is asked for on the main thread only.
        main = threading.current_thread() is threading.main_thread()
        cpus = worker_cpus()  # NOTE: [the cores a compile worker runs on]
        rest = [
            "cpu" if self._cpu else "gpu",
            "1" if main else "0",
            "idle" if self.nice is None else str(self.nice),
            *self.preload,
        ]
        env = worker_env(self.count, cores(cpus))
        try:
            process = None
            if not fresh:
                process = self._server.fork(self._cpu or False, rest, env, passed, cpus)
            if process is None:
                command = [sys.executable, "-m", self.module, str(os.getpid())]
                process = subprocess.Popen(
                    [*command, *map(str, passed), *rest],
                    stdin=subprocess.PIPE,
                    pass_fds=passed,
                    env=env,
                    **own_group(),
                )
        except BaseException:
            os.close(reports_read)
            os.close(ready_read)
            raise
        finally:
            for fd in passed:
                os.close(fd)
        # Before its threads start, which inherit it (the worker takes idle
        # priority again itself, for the threads it starts after).
        take_priority(self.nice, process.pid)
        take_cpus(cpus, process.pid)
        controller().watch(process.pid)  # its imports too (NOTE: [serving first])
        worker = PooledWorker(process, os.fdopen(reports_read, "r"), threading.Event())

        def wait_ready() -> None:
            with contextlib.suppress(OSError):
                os.read(ready_read, 1)  # one byte, or the end: it died starting
            os.close(ready_read)
            with self._lock:  # not between take() and its launch's watch
                worker.ready.set()  # under the lock, as give_back reads it
                if not worker.working:
                    controller().forget(worker.pid)

        threading.Thread(
            target=wait_ready, name=f"stitch-worker-ready-{process.pid}", daemon=True
        ).start()
        return worker
