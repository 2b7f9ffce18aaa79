"""Pre-started spawned compile workers (NOTE: [pre-started compile workers],
runtime/workers/spawned_pool.py): started when the backend is made, ready
before the first piece comes, reused by the next backend call, and every fault
(a worker killed idle or at work, its imports failing, the parent gone)
leaves serving on the uncompiled pieces, never a hang or an orphan."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_serving_first import until
from test_tiered import _fresh_dynamo, gone, serve_until_settled, tiered  # noqa: F401

from stitch.runtime.examples import LlamaConfig
from stitch.runtime.pipeline.tiered.pool_choice import WORKER_MODULE
from stitch.runtime.workers.proc_family import family
from stitch.runtime.workers.serving_first import controller
from stitch.runtime.workers.spawned_pool import SpawnedPool

from backend_support import (
    TINY,
    CapturingBackend,
    compile_model,
    inputs,
    model_for,
    run_fresh,
    stitch_warnings,
)

# An extended module (NOTE: [CI's extended tests] in conftest.py).
pytestmark = pytest.mark.slow

READY_S = 90.0


@pytest.fixture(autouse=True)
def _spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STITCH_COMPILE_START", "spawn")
    # Forked by a fork server even for one worker (NOTE: [a fork server for
    # more than one worker]); tests that set 0 start fresh interpreters.
    monkeypatch.setenv("STITCH_FORK_SERVER", "1")


def wait_gone(pids: list[int], seconds: float = 20.0) -> bool:
    return until(lambda: all(gone(p) for p in pids), seconds)


def environ_after_exec(pid: int) -> list[bytes]:
    """``/proc/PID/environ`` once the worker's exec has ended.

    ``subprocess.Popen`` returns once the child's exec has closed its
    close-on-exec pipe, which the kernel does before it sets up the new
    program's arguments and environment: read in between (2 cores busy, one
    run in 8), both files are empty."""
    proc = Path(f"/proc/{pid}")
    assert until(lambda: (proc / "cmdline").read_bytes() != b""), pid
    return (proc / "environ").read_bytes().split(b"\0")


@contextlib.contextmanager
def one_cpu_worker() -> Iterator[tuple[SpawnedPool, int]]:
    """A pool of one worker for the CPU, started; closed after, its worker gone."""
    pool = SpawnedPool(1, module=WORKER_MODULE)
    pool.start(cpu=True)
    try:
        (pid,) = pool.idle_pids()
        yield pool, pid
    finally:
        pool.close()
    assert wait_gone([pid])


def settle(model: Any, fn: Any, backend: Any, cfg: LlamaConfig = TINY) -> Any:
    run_fresh(model, fn, inputs(cfg, 4))
    tier = backend.compiled[-1].tier
    assert tier is not None
    serve_until_settled(model, fn, tier, cfg)
    return tier


def test_workers_are_ready_before_the_first_call_and_serve_the_next(
    tmp_path: Path,
) -> None:
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path, compile_workers=1))
    pool = backend.spawned_pool
    # Started when the backend was made, before any graph came.
    (pid,) = pool.idle_pids()
    assert pool.wait_ready(READY_S)
    try:
        first = settle(model, fn, backend)
        assert first.pids == [pid]
        assert not first.timeline()["uncompiled"], first.timeline()
        # A second graph through the same backend: the same worker compiles it.
        cfg = LlamaConfig(num_layers=1, hidden_size=48, num_heads=4)
        other = model_for(cfg)
        fn2 = torch.compile(other, backend=backend, fullgraph=True)
        second = settle(other, fn2, backend, cfg)
        assert second is not first and second.pids == [pid]
        assert not second.timeline()["uncompiled"], second.timeline()
        assert pool.idle_pids() == [pid]
    finally:
        pool.close()
    assert wait_gone([pid])


def test_a_worker_for_the_cpu_starts_no_subprocess_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NOTE: [no subprocess pool for C++ kernels]: two compile threads would
    # have Inductor's sidecar pool started, and it builds no C++ kernel.
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "2")
    with one_cpu_worker() as (pool, pid):
        assert pool.wait_ready(READY_S)
        assert family(pid) == [pid], [
            Path(f"/proc/{p}/cmdline").read_bytes() for p in family(pid)
        ]


def test_serving_first_watches_a_worker_starting_or_at_work_never_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NOTE: [an idle worker is not watched]: once none is watched, the
    # controller's thread (a wake-up every tick) ends.
    monkeypatch.setenv("STITCH_SERVING_FIRST", "1")
    with one_cpu_worker() as (pool, pid):
        assert controller().workers == [pid]  # its imports compete with a start
        assert pool.wait_ready(READY_S)
        assert pid not in controller().workers
        assert until(lambda: not controller().running, 5.0)
        worker = pool.take()
        assert worker.pid == pid
        controller().watch(pid)  # as compile_workers.launch_workers does at a launch
        assert controller().running
        pool.give_back(worker)  # its job reported in full
        assert pid not in controller().workers
        assert until(lambda: not controller().running, 5.0)


def test_a_worker_killed_while_idle_is_replaced_with_one_warning(
    tmp_path: Path, caplog: Any
) -> None:
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path, compile_workers=1))
    pool = backend.spawned_pool
    (pid,) = pool.idle_pids()
    assert pool.wait_ready(READY_S)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid])
    try:
        tier = settle(model, fn, backend)
        assert tier.pids != [pid]
        assert not tier.timeline()["uncompiled"], tier.timeline()
    finally:
        pool.close()
    (warned,) = stitch_warnings(caplog)
    assert f"(pid {pid}) was killed by SIGKILL while idle" in warned, warned


def test_a_worker_killed_while_compiling_leaves_its_pieces_uncompiled(
    tmp_path: Path, caplog: Any
) -> None:
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path, compile_workers=1))
    pool = backend.spawned_pool
    assert pool.wait_ready(READY_S)
    run_fresh(model, fn, inputs(TINY, 4))
    tier = backend.compiled[-1].tier
    (pid,) = tier.pids
    os.kill(pid, signal.SIGKILL)
    try:
        serve_until_settled(model, fn, tier)
        left = tier.timeline()["uncompiled"]
        assert left and all("killed by SIGKILL" in why for why in left.values())
        warned = [w for w in stitch_warnings(caplog) if "stays uncompiled" in w]
        assert len(warned) == len(left) == len(stitch_warnings(caplog))
        assert pid not in pool.idle_pids()  # a dead worker is not given back
    finally:
        pool.close()


def test_a_worker_whose_import_fails_leaves_serving_uncompiled(
    tmp_path: Path, caplog: Any
) -> None:
    pool = SpawnedPool(1, preload=["stitch_test_no_such_module"], module=WORKER_MODULE)
    backend = CapturingBackend(tiered(tmp_path, compile_workers=1), spawned_pool=pool)
    model = model_for()
    fn = torch.compile(model, backend=backend, fullgraph=True)
    try:
        tier = settle(model, fn, backend)
    finally:
        pool.close()
    left = tier.timeline()["uncompiled"]
    assert set(left) == set(backend.compiled[-1].backends)
    assert all("exited with status 1" in why for why in left.values()), left
    warned = [w for w in stitch_warnings(caplog) if "stays uncompiled" in w]
    assert len(warned) == len(left)


PARENT = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    from stitch.runtime import CompilationConfig, StitchBackend

    def stopped(pid):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] == "T"

    def children(pids):
        return [
            int(c)
            for pid in pids
            for f in Path(f"/proc/{pid}/task").glob("*/children")
            for c in f.read_text().split()
        ]

    made = []

    def make():
        config = CompilationConfig(
            cache_dir=sys.argv[1], tiered_start=True, compile_workers=2
        )
        made.append(StitchBackend(config))

    if sys.argv[2] == "main":
        make()
    else:  # made on a thread that ends before the workers are ready
        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
    pool = made[0].spawned_pool
    server = pool._server.server  # NOTE: [a fork server for compile workers]
    if sys.argv[3] != "paused":
        pids = pool.idle_pids()
        assert pool.wait_ready(120)
        pids += [server.pid] if server is not None else []
    else:
        # The fork server while it imports, else the fresh workers.
        pids = [server.pid] if server is not None else pool.idle_pids()
        # Busy while they start (a ready worker waiting for a job is not
        # watched: NOTE: [an idle worker is not watched]), so that serving
        # first pauses the workers and whatever they started.
        def busy():
            while True:
                sum(range(1000))

        threading.Thread(target=busy, daemon=True).start()
        def family():
            return children(pids) + pids
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(map(stopped, family())):
            time.sleep(0.01)
        assert all(map(stopped, family())), family()
        pids = family()
    print(json.dumps(pids), flush=True)
    time.sleep(600)
    """)


@pytest.mark.parametrize(
    ("made_on", "state", "server"),
    [
        ("main", "idle", "1"),
        ("thread", "idle", "1"),
        ("main", "paused", "1"),
        ("main", "paused", "0"),
    ],
)
def test_workers_exit_with_a_parent_killed_while_they_are_idle(
    tmp_path: Path, made_on: str, state: str, server: str
) -> None:
    # "paused": by serving first (NOTE: [serving first]) while they start,
    # with what they started; a stopped process left behind would wait for ever.
    # With a fork server (NOTE: [a fork server for compile workers]) the
    # server is what starts: paused while it imports, the workers it forked
    # once idle; without, fresh interpreters.
    env = dict(
        os.environ,
        STITCH_COMPILE_START="spawn",
        STITCH_SERVING_FIRST="1",
        STITCH_FORK_SERVER=server,
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), made_on, state],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert parent.stdout is not None
        # Bounded: a parent that neither reports nor exits fails the test.
        assert select.select([parent.stdout], [], [], 300)[0], "no report in 300 s"
        pids = json.loads(parent.stdout.readline())
        assert len(pids) >= (1 if state == "paused" else 2), pids
        assert not any(gone(p) for p in pids), pids
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone(pids), [p for p in pids if not gone(p)]


def test_a_worker_let_go_that_does_not_leave_is_ended() -> None:
    # NOTE: [an idle worker that does not leave]: a stopped worker never reads
    # the end of its stdin, nor acts on SIGTERM; the pool's reaper kills it.
    pool = SpawnedPool(1, 0, module=WORKER_MODULE)
    pool.start(cpu=True)
    (pid,) = pool.idle_pids()
    os.kill(pid, signal.SIGSTOP)
    pool.close()
    assert wait_gone([pid])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE")
def test_a_pool_at_idle_priority_starts_its_workers_there() -> None:
    # NOTE: [a compile worker's priority]: $STITCH_COMPILE_NICE=idle.
    pool = SpawnedPool(1, None, module=WORKER_MODULE)
    pool.start(cpu=True)
    try:
        (pid,) = pool.idle_pids()
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    finally:
        pool.close()
    assert wait_gone([pid])


@pytest.mark.parametrize("user", [None, "7", "1"])
def test_workers_share_the_cores_between_their_build_pools(
    monkeypatch: pytest.MonkeyPatch, user: str | None
) -> None:
    # NOTE: [a worker's share of the build pools]: two workers on 10 cores
    # get 5 compile threads each, not 10; a value the user set is kept.  With
    # one thread Inductor has no build pool to start (a worker asking for one
    # failed Inductor's assert and exited: two workers on 2 cores get one each).
    # Fresh interpreters: /proc/PID/environ shows what each started with (a
    # worker forked by the fork server sets its environment after the fork:
    # test_fork_server.py checks that it does).
    from stitch.runtime.workers import pool_server, spawned_pool

    monkeypatch.setenv("STITCH_FORK_SERVER", "0")
    monkeypatch.setattr(spawned_pool, "worker_cpus", lambda: set(range(10)))
    if user is None:
        monkeypatch.delenv(pool_server.COMPILE_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(pool_server.COMPILE_THREADS_ENV, user)
    pool = SpawnedPool(2, 0, module=WORKER_MODULE)
    pool.start(cpu=True)
    try:
        pids = pool.idle_pids()
        envs = [environ_after_exec(pid) for pid in pids]
        if user == "1":
            assert pool.wait_ready(120)
            assert not any(
                gone(pid) for pid in pids
            ), "a worker exited while it started"
    finally:
        pool.close()
    assert wait_gone(pids)
    want = f"{pool_server.COMPILE_THREADS_ENV}={user or 5}".encode()
    assert all(want in env for env in envs), want


def test_a_worker_beyond_the_pre_started_ones_is_forked_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # NOTE: [a fork server for compile workers]: the pool's fork server
    # imported and probed once; a worker taken when none is idle is forked
    # from it, its start already done.
    from stitch.runtime.workers.fork_server import ForkedProcess

    with one_cpu_worker() as (pool, pid):
        server = pool._server.server
        assert server is not None and server.ready
        first = pool.take()
        second = pool.take()  # none idle: forked now
        try:
            assert first.pid == pid and second.pid != pid
            for worker in (first, second):
                assert isinstance(worker.process, ForkedProcess)
                assert Path(f"/proc/{worker.pid}/stat").exists()
                assert os.getpgid(worker.pid) == worker.pid  # a group of its own
            assert second.ready.wait(READY_S)
        finally:
            pool.give_back(first)
            pool.give_back(second)
        assert sorted(pool.idle_pids()) == sorted([first.pid, second.pid])
    assert wait_gone([second.pid, server.pid])
    assert not stitch_warnings(caplog)


def test_a_fork_server_that_fails_leaves_fresh_workers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A server whose preparation fails is said once; its workers start as
    # fresh interpreters, as without one.
    from stitch.runtime.workers import spawned_pool

    # The server runs a module that cannot be imported; fresh workers run the
    # pool's own (pool_choice.WORKER_MODULE).
    real = spawned_pool.PoolServer
    monkeypatch.setattr(
        spawned_pool,
        "PoolServer",
        lambda *args, **kwargs: real(
            *args, **{**kwargs, "module": "stitch_test_no_such_module"}
        ),
    )
    with one_cpu_worker() as (pool, pid):
        assert pool.wait_ready(READY_S)
        worker = pool.take()
        pool.give_back(worker)
        assert worker.pid == pid and isinstance(worker.process, subprocess.Popen)
    said = [
        r.getMessage() for r in caplog.records if "fork server failed" in r.getMessage()
    ]
    assert len(said) == 1 and "stitch_test_no_such_module" in said[0], said


def test_a_job_never_waits_for_the_fork_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NOTE: [a job never waits for the fork server]: the server still imports
    # (a preloaded module that takes seconds), so the job gets a fresh
    # interpreter at once, and the server forks none in its place.
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    )
    pool = SpawnedPool(1, preload=["slow_import_target"], module=WORKER_MODULE)
    pool.start(cpu=True)
    worker = None
    try:
        assert not pool._server.ready()
        worker = pool.take()
        assert isinstance(worker.process, subprocess.Popen)  # fresh, not forked
        assert pool.wait_ready(READY_S) and worker.ready.wait(READY_S)
        assert pool.idle_pids() == []  # the pre-start's one fork was not made
        server = pool._server.server
        assert server is not None and server.ready
    finally:
        if worker is not None:
            pool.give_back(worker)
        pool.close()
    assert wait_gone([worker.pid, server.pid])
