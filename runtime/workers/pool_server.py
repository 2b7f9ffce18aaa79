"""A spawned pool's fork server (NOTE: [a fork server for compile workers],
fork_server.py): started with the pool's first workers, each later worker
forked from it.  The pool names the module its workers run (its
``prepare_fork_server`` and ``main``)."""

from __future__ import annotations

import logging
import os
import threading

from .fork_server import (
    FD_MARK,
    ForkedProcess,
    ForkServer,
    ForkServerFailed,
    enabled,
)
from .priority import take_priority
from .serving_first import controller, own_group
from .worker_cpus import cores, take_cpus, worker_cpus

log = logging.getLogger("stitch")

# NOTE: [a worker's share of the build pools]
# Inductor sizes a process's build pool to the machine (a compile thread per
# core, at most 32), so n workers start n pools that size: on an H200's 16
# cores, three workers' 48 pool processes raced each other and the serving
# process for the cores (its start alone took 15.9 s there).  A spawned worker
# gets ``cores // n`` threads instead ($TORCHINDUCTOR_COMPILE_THREADS; a value
# the user set is kept).  With one worker it is Inductor's own choice.
COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"


def worker_env(count: int, cpus: int) -> dict[str, str]:
    """The environment of one of ``count`` spawned workers on ``cpus`` cores."""
    env = dict(os.environ)
    env.setdefault(COMPILE_THREADS_ENV, str(max(1, min(32, cpus // max(count, 1)))))
    return env


class PoolServer:
    """The fork server of a pool of ``count`` workers at ``nice`` that
    preload ``preload`` and run ``module``'s ``main`` (the server runs its
    ``prepare_fork_server`` first): started at its first use, gone at
    :meth:`close`."""

    def __init__(
        self, count: int, nice: int | None, preload: tuple[str, ...], module: str
    ) -> None:
        self.count = count
        self.nice = nice
        self.preload = preload
        self.module = module
        self._lock = threading.Lock()
        self.server: ForkServer | None = None
        self.failed: str | None = None

    def get(self, cpu: bool) -> ForkServer | None:
        """This pool's fork server, started if need be; None where there is
        none (NOTE: [a fork server for compile workers])."""
        with self._lock:
            if self.server is not None or self.failed or not enabled(self.count):
                return self.server
            cpus = worker_cpus()
            server = ForkServer(
                f"{self.module}:prepare_fork_server",
                ["cpu" if cpu else "gpu", *self.preload],
                worker_env(self.count, cores(cpus)),
            )
            try:
                server.start(**own_group())
            except OSError as exc:
                self.failed = f"{type(exc).__name__}: {exc}"
                return None
            self.server = server
        assert server.pid is not None
        take_priority(self.nice, server.pid)
        take_cpus(cpus, server.pid)
        controller().watch(server.pid)  # its imports (NOTE: [serving first])

        def forget() -> None:
            server.wait_ready()
            controller().forget(server.pid)

        threading.Thread(
            target=forget, name="stitch-fork-server-ready", daemon=True
        ).start()
        return server

    def fork(
        self,
        cpu: bool,
        rest: list[str],
        env: dict[str, str],
        passed: tuple[int, int],
        cpus: set[int],
    ) -> ForkedProcess | None:
        """A worker forked by the fork server; None where there is none or it
        failed (said once: workers then start as fresh interpreters)."""
        server = self.get(cpu)
        if server is None:
            return None
        server.wait_ready()
        if server.pid is not None:
            take_cpus(cpus, server.pid)  # the worker's threads inherit them
        argv = [str(server.pid), f"{FD_MARK}0", f"{FD_MARK}1", *rest]
        try:
            return server.fork(f"{self.module}:main", argv, env, passed)
        except ForkServerFailed as exc:
            with self._lock:
                first, self.failed = self.failed is None, str(exc)
                self.server = None
            if first:
                log.warning(
                    "stitch: the compile workers' fork server failed (%s); workers "
                    "start as fresh interpreters",
                    exc,
                )
            return None

    def ready(self) -> bool:
        """Whether the server is up and can fork a worker now."""
        server = self.server
        return server is not None and server.ready

    def close(self) -> None:
        """Let the server go (it leaves once the workers it forked have)."""
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            server.close()
