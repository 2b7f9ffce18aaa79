"""A fork server: one fresh interpreter imports what a compile worker needs,
once, and forks each worker from itself (NOTE: [a fork server for compile
workers]).

NOTE: [a fork server for compile workers]
A compile worker that cannot be forked from the serving process (it has used
CUDA, or ``$STITCH_COMPILE_START=spawn``) used to be a fresh interpreter each:
torch's imports, Inductor's, Stitch's and the vector ISA probe, every time.
On an H200 machine that was 12.4 s a worker (3.8 s torch, 8.1 s Inductor),
four at once at a backend's start, beside the engine's own start; on the
2-core CPU machine about 5 s of a core each.  A :class:`ForkServer` is one
such interpreter, started where the first would have been.  It runs the
preparation it is given (the pool's: Stitch's, torch's and Inductor's
imports; not the ISA probe, which each worker runs beside its first job:
``spawned_workers.prepare_fork_server``), says it is ready, and then forks a
worker for each request: the worker starts with all of that done, in a few
milliseconds, and runs the function the request names.  The server never touches CUDA (its
check that a CUDA device exists is NVML's, ``PYTORCH_NVML_BASED_CUDA_CHECK``);
its preparation proves that a child it forks may still initialize CUDA, or
the server says it failed and the pool starts fresh interpreters as before.

NOTE: [a fork server for more than one worker]
By default a pool uses a fork server only where it starts more than one
worker.  With one worker, on the 2-core machine with the spawn path forced
(docs/performance.md, "Compile workers from a fork server"), the server
made that worker no sooner ready (7.90 s against 6.74 s fresh) and, beside
Dynamo's trace of the 32-layer example, the first output came 3.8 to 6.8 s
after Dynamo alone's against 0.9 to 3.9 s with a fresh worker; with four
workers they were ready in 8.4 s rather than 23.0 s, on 9.6 CPU seconds
rather than 45.6.  ``$STITCH_FORK_SERVER=1`` uses it for one worker too
(later workers, a worker replaced, then start in a tenth of a second).

The serving process and the server talk over a Unix socket of packets (one
JSON object each): a request carries the worker's target, argv and
environment, and its pipes as passed descriptors (``SCM_RIGHTS``); the server
answers with the worker's pid and, when it is reaped, its exit code, which
:class:`ForkedProcess` gives as ``subprocess.Popen`` does.  The server has a
single thread, so a fork copies no lock another thread held.

What ties the processes' lives: the server ends with the serving process (the
kernel's parent-death signal where the main thread started it; else it polls
its parent); a worker ends with the server (its own parent-death signal, set
as it is forked); the server leaves once the serving process closes the socket
and every worker it forked has exited.  A worker sits in a process group of
its own, as a spawned one does (NOTE: [serving first]).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from .proc_family import alive

log = logging.getLogger("stitch")

ENV = "STITCH_FORK_SERVER"
SERVER_MODULE = "stitch.runtime.workers.fork_server_main"
# A placeholder in a request's argv for its K-th passed descriptor.
FD_MARK = "@fd"
PACKET = 1 << 20


def enabled(workers: int) -> bool:
    """Whether a pool of ``workers`` forks them from a fork server:
    ``$STITCH_FORK_SERVER`` 1 or 0 says so; by default where it starts more
    than one (NOTE: [a fork server for more than one worker])."""
    text = os.environ.get(ENV, "").strip()
    if not hasattr(os, "fork") or text == "0":
        return False
    return text == "1" or workers > 1


class ForkServerFailed(RuntimeError):
    """The fork server cannot fork a worker (why, in the message)."""


class ForkedProcess:
    """A worker the fork server forked, as ``subprocess.Popen`` shows a child:
    ``pid``, ``stdin``, ``poll``, ``wait``, ``returncode``, ``terminate``, ``kill``."""

    def __init__(self, pid: int, stdin: IO[bytes]) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    def ended(self, code: int) -> None:
        self.returncode = code
        self._ended.set()


class ForkServer:
    """The serving process's end of a fork server (see the NOTE above)."""

    def __init__(
        self, prepare: str, prepare_args: Sequence[str], env: Mapping[str, str]
    ) -> None:
        # ``prepare``: "module:function", called with ``prepare_args`` in the
        # server before it says it is ready.
        self._command = [sys.executable, "-m", SERVER_MODULE]
        self._prepare = [prepare, *prepare_args]
        self._env = {**env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
        self._sock: socket.socket | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self.failed: str | None = None
        self._lock = threading.Lock()  # one request at a time
        self._pids: dict[int, ForkedProcess] = {}
        self._answers: list[dict[str, Any]] = []
        self._exits: dict[int, int] = {}  # exits read before fork() took the pid
        self._dead = False  # the server has ended
        self._answered = threading.Condition()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, **popen: Any) -> None:
        """Start the server (it imports while the caller goes on); ``popen``:
        more of ``subprocess.Popen``'s arguments (its process group)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        main = threading.current_thread() is threading.main_thread()
        args = [str(theirs.fileno()), str(os.getpid()), "1" if main else "0"]
        try:
            self.process = subprocess.Popen(
                [*self._command, *args, *self._prepare],
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                env=self._env,
                **popen,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(
            target=self._read, name=f"stitch-fork-server-{self.pid}", daemon=True
        ).start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether the server is ready (or has failed) within ``timeout`` s."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.failed is None

    def fork(
        self,
        target: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        pass_fds: Sequence[int] = (),
    ) -> ForkedProcess:
        """A worker that runs ``target`` ("module:function", called with
        ``argv``: ``@fdK`` there is the K-th of ``pass_fds``) with ``env``,
        its stdin a pipe (``stdin`` of the result).  Waits until the server is
        ready; ForkServerFailed where it failed or is gone."""
        self._ready.wait()
        if self.failed is not None or self._sock is None:
            raise ForkServerFailed(self.failed or "it was closed")
        stdin_read, stdin_write = os.pipe()
        request = {"target": target, "argv": list(argv), "env": dict(env)}
        try:
            with self._lock:
                socket.send_fds(
                    self._sock,
                    [json.dumps(request).encode()],
                    [stdin_read, *pass_fds],
                )
                answer = self._answer()
        except OSError as exc:
            os.close(stdin_write)
            raise ForkServerFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            os.close(stdin_read)
        if "pid" not in answer:
            os.close(stdin_write)
            raise ForkServerFailed(answer.get("error") or self.failed or "it ended")
        worker = ForkedProcess(answer["pid"], os.fdopen(stdin_write, "wb"))
        with self._answered:
            code = self._exits.pop(worker.pid, None)
            if code is None and self._dead:
                code = -signal.SIGKILL
            if code is None:
                self._pids[worker.pid] = worker
        if code is not None:
            worker.ended(code)
        return worker

    def close(self) -> None:
        """Let the server go: it leaves once every worker it forked has exited."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    def _answer(self) -> dict[str, Any]:
        with self._answered:
            while not self._answers and not self._dead:
                self._answered.wait()
            return self._answers.pop(0) if self._answers else {}

    def _read(self) -> None:
        """The server's messages: ready or failed, a pid, an exit code."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(PACKET)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if "ready" in message:
                self._ready.set()
            elif "failed" in message:
                self.failed = message["failed"]
                self._ready.set()
            elif "exit" in message:
                with self._answered:
                    worker = self._pids.pop(message["exit"], None)
                    if worker is None:  # before fork() took its pid
                        self._exits[message["exit"]] = message["code"]
                if worker is not None:
                    worker.ended(message["code"])
            else:
                with self._answered:
                    self._answers.append(message)
                    self._answered.notify_all()
        self._gone()

    def _gone(self) -> None:
        """The server has ended: so has every worker it forked (their parent-death
        signal), each given SIGKILL's exit code once it is gone."""
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5.0)
            code = self.process.returncode
            if self.failed is None and not self._ready.is_set():
                self.failed = f"the fork server ended while starting (exit {code})"
        self.failed = self.failed or "the fork server ended"
        self._ready.set()
        with self._answered:
            workers, self._pids = list(self._pids.values()), {}
            self._dead = True
            self._answered.notify_all()
        for worker in workers:
            deadline = time.monotonic() + 5.0
            while alive(worker.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            worker.ended(-signal.SIGKILL)
