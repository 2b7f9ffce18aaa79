"""The fork server (NOTE: [a fork server for compile workers],
runtime/workers/fork_server.py): a worker forked from it starts with what the
server prepared, gets its own environment, pipes and process group, reports
its exit code as a child does; a server that fails says why; none outlives
the serving process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_serving_first import until
from test_tiered import gone

from stitch.runtime.workers.fork_server import ForkServer, ForkServerFailed

HERE = str(Path(__file__).resolve().parent)
TARGETS = "fork_targets"


def env(**more: str) -> dict[str, str]:
    path = os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **more}


def test_a_worker_starts_with_what_the_server_prepared() -> None:
    server = ForkServer(f"{TARGETS}:prepare", ["imported"], env())
    server.start()
    try:
        assert server.wait_ready(60) and server.ready
        read, write = os.pipe()
        worker = server.fork(
            f"{TARGETS}:report", ["@fd0", "3"], env(FORK_TARGET_VALUE="mine"), [write]
        )
        os.close(write)
        assert worker.stdin is not None
        worker.stdin.write(b"a job\n")
        worker.stdin.close()
        with os.fdopen(read) as f:
            seen = json.loads(f.read())
        assert worker.wait(30) == 3 and worker.poll() == 3
    finally:
        server.close()
    assert seen == {
        "prepared": ["imported"],  # done once, in the server
        "env": "mine",  # the request's environment, not the server's
        "stdin": "a job",
        "own_group": True,  # NOTE: [serving first]
        "ppid": server.pid,
    }
    assert until(lambda: server.process.poll() is not None, 10)  # it left


def test_a_killed_worker_ends_as_a_child_does() -> None:
    server = ForkServer(f"{TARGETS}:prepare", [], env())
    server.start()
    try:
        worker = server.fork(f"{TARGETS}:sleep", ["60"], env())
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(0.2)
        worker.kill()
        assert worker.wait(30) == -signal.SIGKILL
    finally:
        server.close()


def test_a_server_whose_preparation_fails_says_why() -> None:
    server = ForkServer(f"{TARGETS}:fail", ["x"], env())
    server.start()
    assert server.wait_ready(60) and not server.ready
    with pytest.raises(
        ForkServerFailed, match=r"RuntimeError: preparation refused \['x'\]"
    ):
        server.fork(f"{TARGETS}:sleep", ["1"], env())
    assert until(lambda: server.process.poll() is not None, 10)


PARENT = textwrap.dedent("""
    import json, os, sys
    from stitch.runtime.workers.fork_server import ForkServer
    server = ForkServer("fork_targets:prepare", [], dict(os.environ))
    server.start()
    worker = server.fork("fork_targets:sleep", ["600"], dict(os.environ))
    print(json.dumps([server.pid, worker.pid]), flush=True)
    os.kill(os.getpid(), 9)
    """)


def test_no_server_nor_worker_outlives_the_serving_process() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PARENT],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    pids = json.loads(done.stdout.splitlines()[0])
    assert until(lambda: all(gone(p) for p in pids), 20), pids


@pytest.mark.parametrize(
    ("env_value", "workers", "used"),
    [(None, 1, False), (None, 2, True), ("1", 1, True), ("0", 4, False)],
)
def test_a_pool_uses_a_fork_server_for_more_than_one_worker(
    monkeypatch: pytest.MonkeyPatch, env_value: str | None, workers: int, used: bool
) -> None:
    # NOTE: [a fork server for more than one worker]
    from stitch.runtime.workers.fork_server import ENV, enabled

    if env_value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, env_value)
    assert enabled(workers) is used
