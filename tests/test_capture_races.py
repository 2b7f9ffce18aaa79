"""Races between a serving thread that captures CUDA graphs and a landing
(NOTE: [graphs are dropped on the serving thread], runtime/cudagraph/wrapper.py;
NOTE: [a capture that raced with a recapture], runtime/cudagraph/manager.py).

The graphs are emulated (``EmulatedGraphOps``) and the threads are real: the
capture runs a hook that lets the other thread act and waits for it, so each
test runs one interleaving, every time."""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch
from test_tiered import _fresh_dynamo, tiered  # noqa: F401

from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.cudagraph import CUDAGraphManager, EmulatedGraphOps
from stitch.runtime.cudagraph.wrapper import CUDAGraphWrapper
from stitch.runtime.examples import LlamaConfig
from stitch.runtime.pipeline.piecewise import PiecewiseBackend
from stitch.runtime.pipeline.tiered import compile_workers, swap
from stitch.runtime.pipeline.tiered.tier import Tier
from stitch.runtime.pipeline.tiered.worker_process import Worker
from stitch.runtime.store.index import EntryRecord, PieceRecord

from backend_support import INDUCTOR_TOL, inputs, model_for, run_fresh

# Long enough never to run out on a loaded machine; only a broken test waits it.
WAIT_S = 60.0


class WatchedOps(EmulatedGraphOps):
    """Emulated graphs that run a hook inside the next capture, and record for
    each graph released the thread that released it and whether a capture was
    running then (on a GPU that release is a CUDA call)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.during_next: Callable[[], None] | None = None
        self.released: list[tuple[str, bool]] = []

    def capture(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        pool: Any,
        first: bool,
        weak_output: bool,
    ) -> tuple[Any, Any]:
        self.inside += 1
        try:
            hook, self.during_next = self.during_next, None
            if hook is not None:
                hook()
            graph, output = super().capture(
                fn, args, pool=pool, first=first, weak_output=weak_output
            )
        finally:
            self.inside -= 1
        # Held weakly here, so a graph the runtime drops is released at once.
        self.graphs.remove(graph)
        weakref.finalize(graph, self._released)
        return graph, output

    def _released(self) -> None:
        self.released.append((threading.current_thread().name, self.inside > 0))


# -- a capture that raced with a recapture (the manager) ------------------------------


def test_a_size_dropped_while_it_captured_is_captured_again() -> None:
    """recapture_sizes on another thread while size 8 captures: 8 stays
    pending (not captured), and with capture forbidden after start-up its
    next call still captures instead of raising."""
    config = CompilationConfig(
        cudagraph_capture_sizes=[4, 8],
        cudagraph_forbid_capture_after_startup=True,
    ).cudagraphs
    ops = WatchedOps()
    manager = CUDAGraphManager(config, ops=ops)
    x = torch.arange(8.0)
    slots: dict[int, Any] = {}

    def fresh(size: int) -> None:
        slots[size] = CUDAGraphWrapper(
            lambda t: t * 2,
            manager,
            piece="piece",
            size=size,
            weak_output=True,
            slot=(slots, size),
            min_warmups=1,
        )

    def run(size: int) -> Any:
        return slots[size](x[:size])

    fresh(4)
    fresh(8)
    manager.capture_sizes(run, [4], defer_rest=True)
    assert manager.pending == [8]

    def landing() -> None:
        # What a landing does, on its own thread: drop the graphs of every
        # size (fresh wrappers in the slots) and ask for them again.
        manager.recapture_sizes({4, 8})
        fresh(4)
        fresh(8)

    def during_capture() -> None:
        thread = threading.Thread(target=landing, name="landing")
        thread.start()
        thread.join(WAIT_S)
        assert not thread.is_alive()

    ops.during_next = during_capture
    run(8)  # the warm-up call
    torch.testing.assert_close(run(8), x * 2)  # the capture, raced
    assert ops.during_next is None  # the hook ran
    assert 8 not in manager.captured_sizes, manager.captured_sizes
    assert 8 in manager.pending and manager.capture_allowed
    assert manager.capture_pending(run) == 0
    assert manager.captured_sizes == {4, 8} and not manager.capture_allowed
    for size in (4, 8):
        torch.testing.assert_close(run(size), x[:size] * 2)


# -- a landing during a capture (a tiered start) ------------------------------------


class PipeWorkers:
    """Compile workers that compile nothing: each is a pipe that the test
    writes reports to, read by the real reader thread (compile_workers._read)."""

    def __init__(self) -> None:
        self.pipes: list[Any] = []

    def forker(self, compile_one: Any, shape_env: Any) -> Any:
        def launch(group: Any, nice: int, gated: bool) -> Worker:
            read_fd, write_fd = os.pipe()
            self.pipes.append(os.fdopen(write_fd, "w", buffering=1))
            return Worker(os.getpid(), read_fd, -1, lambda: "was closed by the test")

        return launch

    def report(self, name: str, record: PieceRecord) -> None:
        line = {"piece": name, "record": msgspec.json.encode(record).decode()}
        self.pipes[0].write(json.dumps({**line, "guards": []}) + "\n")

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()


def _uncompiled_twin(tier: Tier, name: str, record: PieceRecord) -> PiecewiseBackend:
    """The "compiled" piece that lands: the uncompiled one as a plain backend
    (no Inductor here), so its swap succeeds."""
    twin = object.__new__(PiecewiseBackend)
    twin.__dict__.update(tier.backends[name].__dict__)
    return twin


def _record(tier: Tier, name: str) -> PieceRecord:
    backend = tier.backends[name]
    entry = EntryRecord(target="general", key="0" * 16, saved=True)
    return PieceRecord(backend.module_path or "", backend.size_index, (entry,), ())


@pytest.mark.parametrize("mode", ["PIECEWISE", "FULL"])
def test_a_landing_during_a_capture_releases_graphs_only_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A piece lands (on the worker's reader thread) while the serving thread
    captures size 8, with size 4 already captured: nothing is released during
    the capture or on the reader thread (on a GPU that would invalidate the
    capture), the landing does not wait for the capture, and it is not lost:
    the next forwards release the graphs on the serving thread, swap the
    piece in and capture again."""
    workers = PipeWorkers()
    monkeypatch.setenv("STITCH_COMPILE_START", "fork")
    monkeypatch.setattr(compile_workers, "forker", workers.forker)
    monkeypatch.setattr(swap, "compiled_backend", _uncompiled_twin)
    landed = threading.Event()
    land = Tier.landed

    def landed_and_told(tier: Tier, *args: Any) -> None:
        land(tier, *args)
        landed.set()

    monkeypatch.setattr(Tier, "landed", landed_and_told)
    cfg = LlamaConfig(num_layers=2, hidden_size=72, num_heads=4)
    config = tiered(
        tmp_path,
        compile_workers=1,
        cudagraph_mode=mode,
        cudagraph_capture_sizes=[2, 4, 8],
        cudagraph_pad_values={"positions": -1},
    )
    ops = WatchedOps()
    manager = CUDAGraphManager(config.cudagraphs, ops=ops)
    backend = StitchBackend(config, cudagraphs=manager)
    model = model_for(cfg)
    fn = torch.compile(model, backend=backend, fullgraph=True)
    serving = threading.current_thread().name

    def forward(n: int) -> None:
        args = inputs(cfg, n)
        got = run_fresh(model, fn, args).clone()
        torch.testing.assert_close(got, run_fresh(model, model, args), **INDUCTOR_TOL)

    def serve_until(done: Callable[[], bool], n: int, most: int = 6) -> None:
        for _ in range(most):
            if done():
                return
            forward(n)
        assert done(), f"not done after {most} forwards of {n}"

    try:
        serve_until(lambda: 4 in manager.captured_sizes, 4)
        (compiled,) = backend.compiled
        tier = compiled.tier
        name = sorted(tier.backends)[0]
        outcome: dict[str, bool] = {}

        def during_capture() -> None:
            workers.report(name, _record(tier, name))
            outcome["landed"] = landed.wait(WAIT_S)
            outcome["released"] = bool(ops.released)

        ops.during_next = during_capture
        serve_until(lambda: "landed" in outcome, 8)
        assert outcome["landed"], "the landing waited for the capture"
        assert not outcome["released"], (
            "graphs released while size 8 captured (thread, inside a capture): "
            f"{ops.released}"
        )
        graphs = compiled.fn.graphs
        assert graphs.stale and graphs.recaptures == 1
        forward(4)  # drops the graphs, here, before it runs
        assert not graphs.stale
        assert ops.released, "the landing dropped no graph"
        assert set(ops.released) == {(serving, False)}, ops.released
        assert 4 not in manager.captured_sizes
        serve_until(lambda: 4 in manager.captured_sizes, 4)
        assert name in tier.swapped_at, tier.timeline()
    finally:
        workers.close()
    assert tier.wait(WAIT_S)  # the reader gave the other pieces up and ended


def test_the_shared_pool_keeps_a_graph_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NOTE: [a pool outlives its graphs]: the shared pool is born with one small
    graph the ops keep (its users' count, in the device and the host
    allocators, stays above 0 when a recapture drops every other graph); a
    pool of one graph gets none."""
    import contextlib

    from stitch.runtime.cudagraph.graph_ops import CUDAGraphOps

    captured: list[tuple[str, Any]] = []

    class Graph:  # torch.cuda.CUDAGraph as the ops use it
        def capture_begin(self, pool: Any) -> None:
            captured.append(("begin", pool))

        def capture_end(self) -> None:
            captured.append(("end", None))

    class Stream:
        def wait_stream(self, other: Any) -> None:
            pass

    handles = iter([(0, 7), (0, 8)])
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: next(handles))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    real_zeros = torch.zeros
    monkeypatch.setattr(
        torch, "zeros", lambda *a, device=None, **k: captured.append(("fill", device))
    )
    ops = CUDAGraphOps()
    assert ops.new_pool() == (0, 7) and not captured
    assert ops.new_pool(shared=True) == (0, 8)
    monkeypatch.setattr(torch, "zeros", real_zeros)
    assert captured == [("begin", (0, 8)), ("fill", "cuda"), ("end", None)]
    assert len(ops._anchors) == 1 and isinstance(ops._anchors[0], Graph)
