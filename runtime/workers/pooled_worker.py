"""A spawned compile worker as its pool holds it (NOTE: [pre-started compile
workers], workers/spawned_pool.py): a fresh interpreter or one the pool's fork server
forked (NOTE: [a fork server for compile workers])."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import threading
from typing import IO

from .fork_server import ForkedProcess
from .serving_first import controller

# Seconds a worker the pool let go has to leave before it is ended.
CLOSE_GRACE_S = 5.0


@dataclasses.dataclass
class PooledWorker:
    """A spawned worker as its pool holds it: the process, the open end of
    the pipe it reports on (kept across jobs) and whether it has said it is
    ready (torch and Inductor imported, the ISA probe done, pools up)."""

    process: subprocess.Popen[bytes] | ForkedProcess
    reports: IO[str]
    ready: threading.Event
    idle_since: float = 0.0
    working: bool = False  # taken for a job, not yet given back

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Let the worker go: it exits at the end of its stdin, or is ended
        (NOTE: [an idle worker that does not leave])."""
        controller().forget(self.pid)  # resumed, if paused (NOTE: [serving first])
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        with contextlib.suppress(OSError):
            self.reports.close()
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        # NOTE: [an idle worker that does not leave]
        # A worker the pool lets go holds no job, so ending it loses nothing.
        # It may not get to read the end of its stdin soon: one still
        # importing, or one at SCHED_IDLE on a busy machine (it runs only
        # when no other thread wants the core; CI saw one outlive 20 s).
        # After CLOSE_GRACE_S it is sent SIGTERM (its handler is the
        # default: exit), then SIGKILL, so a closed pool leaves no process.
        for end in (None, self.process.terminate, self.process.kill):
            if end is not None:
                with contextlib.suppress(OSError):
                    end()
            try:
                self.process.wait(CLOSE_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                continue
