"""The fork server's own process (NOTE: [a fork server for compile workers],
fork_server.py): ``python -m stitch.runtime.workers.fork_server_main SOCKET
PARENT PARENT_DEATH PREPARE [ARG...]``."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from .fork_server import FD_MARK, PACKET
from .proc_family import die_with_parent_thread


def main(argv: Sequence[str]) -> int:
    """The server: prepare, say so, then fork a worker per request until the
    socket's end (and every worker's) or the serving process's."""
    sock = socket.socket(fileno=int(argv[0]))
    parent, parent_death = int(argv[1]), argv[2] == "1"
    if parent_death:
        die_with_parent_thread()
    if os.getppid() != parent:
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    try:
        _call(argv[3], list(argv[4:]))
    except BaseException as exc:  # noqa: BLE001 - said to the serving process
        _send(sock, {"failed": f"{type(exc).__name__}: {exc}"})
        return 1
    _send(sock, {"ready": True})
    children: set[int] = set()
    open_ = True
    while open_ or children:
        readable, _, _ = select.select([sock] if open_ else [], [], [], 0.2)
        _reap(sock, children)
        if os.getppid() != parent:
            return 0  # the serving process is gone: its workers go with this one
        if not readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, PACKET, 64)
        except OSError:
            data, fds = b"", []
        if not data:
            open_ = False
            continue
        _serve(sock, json.loads(data), fds, children)
    return 0


def _serve(
    sock: socket.socket, request: dict[str, Any], fds: list[int], children: set[int]
) -> None:
    server = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(sock, {"error": f"fork: {type(exc).__name__}: {exc}"})
        return
    if pid == 0:  # the worker: never returns
        sock.close()
        _run(request, fds, server)
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # as the worker does: before its pid is told
        os.setpgid(pid, pid)
    children.add(pid)
    _send(sock, {"pid": pid})


def _run(request: dict[str, Any], fds: list[int], server: int) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # NOTE: [serving first]: a group of its own
        die_with_parent_thread()  # it ends with the server
        if os.getppid() != server:
            os._exit(0)  # the server ended before the signal was asked for
        os.dup2(fds[0], 0)
        os.close(fds[0])
        sys.stdin = io.TextIOWrapper(
            io.BufferedReader(io.FileIO(0, "r", closefd=False))
        )
        passed = [str(fd) for fd in fds[1:]]
        argv = [
            passed[int(a[len(FD_MARK) :])] if a.startswith(FD_MARK) else a
            for a in request["argv"]
        ]
        os.environ.clear()
        os.environ.update(request["env"])
        code = _call(request["target"], argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the worker's own end
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _call(target: str, args: list[str]) -> int:
    module, _, function = target.partition(":")
    return int(getattr(importlib.import_module(module), function)(args) or 0)


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sock.send(json.dumps(message).encode())


if __name__ == "__main__":
    from stitch.runtime.workers.fork_server_main import main as _main

    _code = _main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_code)
