"""The cores a compile worker runs on (NOTE: [the cores a compile worker runs
on], runtime/workers/worker_cpus.py): a worker started by a thread
pinned to one core (vLLM's CPU worker pins every thread of its process, Intel's
OpenMP its main thread) still runs on every core of the serving process, its
build pool sized to them; ``$STITCH_COMPILE_CPUS`` names them instead."""

from __future__ import annotations

import json
import logging
import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from stitch.runtime.pipeline.tiered import forked_workers
from stitch.runtime.pipeline.tiered.pool_choice import WORKER_MODULE
from stitch.runtime.workers import worker_cpus
from stitch.runtime.workers.spawned_pool import SpawnedPool
from stitch.runtime.workers.worker_cpus import parse_cpus

needs_two = pytest.mark.skipif(
    len(getattr(os, "sched_getaffinity", lambda _: ())(0)) < 2,
    reason="needs a process that may run on two cores or more",
)


def test_parse_cpus_reads_taskset_lists_and_names_what_it_cannot() -> None:
    assert parse_cpus("0-3,8") == {0, 1, 2, 3, 8}
    assert parse_cpus(" 5 ") == {5}
    for bad, part in (("0-x", "'0-x'"), ("3-1", "'3-1'"), ("1,,2", "''")):
        with pytest.raises(ValueError, match=part):
            parse_cpus(bad)


def test_an_unreadable_setting_is_named_once_and_the_process_cores_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(worker_cpus, "_warned", set())
    monkeypatch.setenv(worker_cpus.ENV, "0-two")
    with caplog.at_level(logging.WARNING, logger="stitch"):
        first, second = worker_cpus.worker_cpus(), worker_cpus.worker_cpus()
    assert first == second and os.sched_getaffinity(0) <= first
    named = [r for r in caplog.records if "'0-two'" in r.getMessage()]
    assert len(named) == 1 and worker_cpus.ENV in named[0].getMessage()
    monkeypatch.setenv(worker_cpus.ENV, "0")
    assert worker_cpus.worker_cpus() == {0}


def _report_cpus(name: str) -> Any:
    """A forked worker's compile: reports where it runs, and the size of
    Inductor's build pool, as its error."""
    from torch._inductor.async_compile import get_compile_threads

    cpus = sorted(os.sched_getaffinity(0))
    raise RuntimeError(f"cpus {cpus} threads {get_compile_threads()}")


def _from_a_pinned_thread(start: Any, core: int) -> Any:
    """``start()`` on a thread pinned to ``core`` alone; what it returned."""
    out: dict[str, Any] = {}

    def pinned() -> None:
        os.sched_setaffinity(0, {core})  # this thread only
        out["started"] = start()

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()
    return out["started"]


@needs_two
def test_a_worker_forked_by_a_pinned_thread_runs_on_every_core_of_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch._inductor import config

    everyone = worker_cpus.worker_cpus()
    # Inductor as a pinned process sizes its build pool: to one core.
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    launch = forked_workers.forker(_report_cpus, None)
    group = [SimpleNamespace(pieces=[SimpleNamespace(name="submod_0")])]
    with config.patch(compile_threads=1):
        worker = _from_a_pinned_thread(lambda: launch(group, 0, False), min(everyone))
    with os.fdopen(worker.reports) as lines:
        report = json.loads(lines.readline())
    worker.ended()
    # Its cores, and Inductor's build pool sized to them.
    expected = f"cpus {sorted(everyone)} threads {min(32, len(everyone))}"
    assert expected in report["error"], report


@needs_two
def test_a_worker_spawned_by_a_pinned_thread_runs_on_every_core_of_the_process() -> (
    None
):
    everyone = worker_cpus.worker_cpus()
    pool = SpawnedPool(1, module=WORKER_MODULE)
    try:
        _from_a_pinned_thread(lambda: pool.start(cpu=True), min(everyone))
        (pid,) = pool.idle_pids()
        assert os.sched_getaffinity(pid) == everyone
    finally:
        pool.close()


@needs_two
def test_compile_cpus_names_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    core = max(worker_cpus.worker_cpus())
    monkeypatch.setenv(worker_cpus.ENV, str(core))
    launch = forked_workers.forker(_report_cpus, None)
    worker = launch([SimpleNamespace(pieces=[SimpleNamespace(name="p")])], 0, False)
    with os.fdopen(worker.reports) as lines:
        report = json.loads(lines.readline())
    worker.ended()
    assert f"cpus [{core}]" in report["error"], report
