"""NOTE: [the compile's share]: a busy process's forwards wait at a gate while
the compile is owed too much of its time, and never once nothing is owed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from stitch.runtime.pipeline.piecewise import PiecewiseBackend
from stitch.runtime.workers import compile_share, serving_first
from stitch.runtime.workers.compile_share import CompileShare
from stitch.runtime.workers.proc_family import cpu_s
from stitch.runtime.workers.serving_first import ServingFirst


def test_a_forward_waits_only_once_the_compile_is_owed_more_than_its_bound() -> None:
    share = CompileShare(share=0.8, owed_s=0.05)
    share.busy(0.05)  # owed 0.04: under the bound
    assert not share.closed
    share.admit()  # returns at once
    assert share.waits == 0
    share.busy(0.05)  # owed 0.08
    assert share.closed
    share.idle(0.2)  # paid back 0.04: still owed
    assert share.closed
    share.idle(0.25)  # paid back: nothing owed
    assert not share.closed and share.owed <= 0


def test_idle_time_banks_a_bounded_credit() -> None:
    share = CompileShare(share=0.8, owed_s=0.05)
    share.idle(3600.0)  # an hour idle
    assert share.owed == -compile_share.CREDIT_S
    # A burst after it waits once the credit is spent, not an hour later.
    share.busy((compile_share.CREDIT_S + 0.06) / 0.8)
    assert share.closed


def test_a_process_busy_less_than_its_share_never_waits() -> None:
    # A tenth of the time busy: what each forward owes, the idle time after it
    # pays back (the light load of docs/performance.md).
    share = CompileShare(share=0.85, owed_s=0.05)
    for _ in range(1000):
        share.busy(0.015)
        share.idle(0.135)
        assert not share.closed


def test_the_workers_running_share_decides_what_is_owed() -> None:
    share = CompileShare(share=0.75, owed_s=0.05)
    share.ran_until(10.0, 0.0)  # the first reading only starts the clock
    assert share.owed == 0
    share.ran_until(10.1, 0.0)  # every worker paused: owed 0.075
    assert share.closed
    share.ran_until(10.4, 1.0)  # every worker ran: paid back 0.075
    assert not share.closed


def test_a_wait_is_bounded_and_release_opens_the_gate() -> None:
    share = CompileShare(share=0.8, owed_s=0.01)
    share.busy(1.0)
    assert share.closed
    waiter = threading.Thread(target=share.admit)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waiting at the gate
    share.release()
    waiter.join(5)
    assert not waiter.is_alive() and share.waits == 1 and not share.closed


def test_pay_back_sleeps_for_what_is_owed_and_then_owes_nothing() -> None:
    share = CompileShare(share=0.5, owed_s=0.05)
    share.busy(0.16)  # owed 0.08: 0.16 s alone pays it back
    share.pay_back()
    assert share.owed <= 0 and share.waits == 1
    assert share.waited_s == pytest.approx(0.16)


HOG = "while True:\n    pass\n"


def _hogs() -> list[subprocess.Popen[bytes]]:
    """A busy process per core this one may use."""
    cores = len(os.sched_getaffinity(0))
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(cores)]


def _end(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux's /proc")
def test_forwards_back_to_back_wait_at_the_gate_and_the_worker_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A serving thread that calls ``admit`` before each "forward" (a spin of
    CPU) beside a worker that keeps a core busy: serving first pauses the
    worker at each forward, the share closes the gate, the thread waits, and
    the worker runs while it does.  A worker per core, so that the workers
    make the thread wait on any machine, however idle (one alone did only
    beside another test's load)."""
    monkeypatch.setenv(serving_first.ENV, "1")
    control = ServingFirst()
    hogs = _hogs()
    hog = hogs[0]
    stop = threading.Event()

    def forwards() -> None:
        while not stop.is_set():
            control.admit()
            start = time.thread_time()
            while time.thread_time() - start < 0.01:
                sum(range(1000))

    thread = threading.Thread(target=forwards)
    try:
        for h in hogs:
            control.watch(h.pid)
        thread.start()
        deadline = time.monotonic() + 60
        while control.share.waits < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert control.share.waits >= 3, "the forwards never waited for the compile"
        # While the forwards wait, the worker is not paused: it computes.
        before = cpu_s(hog.pid)
        deadline = time.monotonic() + 60
        while cpu_s(hog.pid) - before < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_s(hog.pid) - before >= 0.2
    finally:
        stop.set()
        thread.join()
        control.release()
        _end(hogs)
    # The controller ends with its workers, and the gate is open for good.
    assert not control.share.closed


def test_without_a_controller_thread_a_forward_never_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # STITCH_SERVING_FIRST=0: no controller runs, so nothing pays back; a
    # share left owed (a build's) must not make every forward wait.
    monkeypatch.setenv(serving_first.ENV, "0")
    control = ServingFirst()
    control.share.busy(10.0)
    assert control.share.closed
    control.admit()
    assert control.share.waits == 0


def test_a_wait_ends_once_what_it_waits_to_run_is_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NOTE: [a landed piece does not wait at the gate]: the gate stays closed
    # throughout; the wait ends because ready() says so, not at MAX_WAIT_S.
    monkeypatch.setattr(compile_share, "MAX_WAIT_S", 600.0)
    share = CompileShare(share=0.8, owed_s=0.01)
    share.busy(1.0)
    landed = threading.Event()
    threading.Timer(0.1, landed.set).start()
    share.admit(landed.is_set)
    assert landed.is_set() and share.closed and share.waits == 1
    assert share.waited_s < 300


class _Tier:
    """What a TieredPiece asks of its tier here: no capture, and a swap (the
    call's ``swap.swap``) that says it was asked for."""

    def __init__(self) -> None:
        self.swapped: list[tuple[Any, ...]] = []

    def capturing(self) -> bool:
        return False

    def swap(self, backend: Any, args: tuple[Any, ...]) -> str:
        self.swapped.append(args)
        return "swapped"


def test_a_landed_piece_swaps_in_without_waiting_at_a_closed_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NOTE: [a landed piece does not wait at the gate], with the real gate
    closed for as long as the test could run."""
    from stitch.runtime.pipeline.tiered import tiered_piece

    monkeypatch.setattr(compile_share, "MAX_WAIT_S", 600.0)
    share = CompileShare(share=0.8, owed_s=0.01)
    share.busy(1.0)
    monkeypatch.setattr(tiered_piece, "controller", lambda: share)
    monkeypatch.setattr(tiered_piece, "swap", lambda tier, b, args: tier.swap(b, args))
    tier = _Tier()
    piece = tiered_piece.TieredPiece.__new__(tiered_piece.TieredPiece)
    piece._tier = tier
    piece._landed = object()  # type: ignore[assignment]  # a record landed
    assert piece(1, 2) == "swapped" and share.waits == 0
    # Not landed yet: its call waits at the gate until its piece lands, then
    # swaps it in (it would otherwise wait the gate's 600 s).
    waiting = tiered_piece.TieredPiece.__new__(tiered_piece.TieredPiece)
    waiting._tier = tier

    def land() -> None:
        waiting._landed = object()  # type: ignore[assignment]

    threading.Timer(0.1, land).start()
    assert waiting(3) == "swapped" and share.closed and share.waits == 1
    assert tier.swapped == [(1, 2), (3,)]
    # Given up while it waits (a plain backend now, as Tier.give_up leaves
    # it): the wait ends, and the call runs what it has become.
    given_up = tiered_piece.TieredPiece.__new__(tiered_piece.TieredPiece)
    given_up._tier = tier

    def give_up() -> None:
        given_up.__class__ = _GivenUp

    threading.Timer(0.1, give_up).start()
    assert given_up(4) == "uncompiled" and share.closed and share.waits == 2
    assert tier.swapped == [(1, 2), (3,)]


class _GivenUp(PiecewiseBackend):
    def __call__(self, *args: Any) -> Any:
        return "uncompiled"
