"""A tiered start with spawned compile workers (NOTE: [forked or spawned
compile workers], runtime/pipeline/tiered/compile_workers.py) and under CUDA graphs
(NOTE: [uncompiled pieces under CUDA graphs], runtime/cudagraph/wrapper.py).

On a GPU the workers are spawned, since a process that has used CUDA cannot
fork one that does; here they are spawned on the CPU with
``$STITCH_COMPILE_START=spawn``, and CUDA graphs are emulated
(``EmulatedGraphOps``).  The last test runs the same on a GPU (marked
``cuda``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from test_tiered import _fresh_dynamo, serve_until_settled, tiered  # noqa: F401

from stitch.runtime import CompilationConfig, StitchBackend
from stitch.runtime.cudagraph import CUDAGraphManager, EmulatedGraphOps, PaddedRunner
from stitch.runtime.examples import LlamaConfig
from stitch.runtime.pipeline.piecewise import PiecewiseBackend
from stitch.runtime.pipeline.tiered.job_modules import defining_modules

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    inputs,
    model_for,
    run_fresh,
    stitch_warnings,
)

# Each test compiles the example llama anew (the fixture in test_tiered.py says why).


def test_fake_views_symbols_and_guards_cross_a_pickle() -> None:
    """NOTE: [a view's base in a pickled fake tensor]: torch's GraphPickler
    fails on a fake tensor that is a view; the seam's pickler does not, and the
    other side sees the same sizes, strides, symbols and guards."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from stitch.runtime.compat import graph_pickle

    mode = FakeTensorMode(shape_env=ShapeEnv())
    real = torch.zeros(6, 8)
    torch._dynamo.mark_dynamic(real, 0)
    with mode:
        base = mode.from_tensor(real, symbolic_context=None)
        n = base.shape[0]
        view = base[1:, 2:6]
        assert view._is_view()
        assert bool(n > 2)  # adds a guard to the ShapeEnv
    (view2, n2), mode2 = graph_pickle.loads(graph_pickle.dumps((view, n)))
    assert view2.shape == view.shape and view2.stride() == view.stride()
    assert view2.storage_offset() == view.storage_offset() and view2._is_view()
    assert str(n2) == str(n) and mode2.shape_env is not mode.shape_env
    assert [str(g.expr) for g in mode2.shape_env.guards] == [
        str(g.expr) for g in mode.shape_env.guards
    ]


def _twice_op() -> Any:
    """A custom op registered inside a test: a spawned worker that imports
    this module does not have it, so it cannot read a piece that calls it."""
    name = "stitch_test_spawn::twice"
    if not hasattr(torch.ops.stitch_test_spawn, "twice"):

        @torch.library.custom_op(name, mutates_args=())
        def twice(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @twice.register_fake
        def _(x: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(x)

    return torch.ops.stitch_test_spawn.twice


def _traced_from(target: Any, stack: str = "a_model_package.layers.Block") -> Any:
    """A unit whose one graph calls ``target`` under a module of class ``stack``."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    node = graph.call_function(target, (x,))
    node.meta["nn_module_stack"] = {"L__self__": ("layer", stack)}
    graph.output(node)
    return SimpleNamespace(graph=torch.fx.GraphModule(torch.nn.Module(), graph))


def test_a_worker_imports_the_model_only_for_an_op_it_cannot_place() -> None:
    """NOTE: [a worker imports the model's modules only for an op it cannot
    place] (runtime/pipeline/tiered/job_modules.py)."""
    # aten's ops, and an op whose definition names its module: not the model's.
    assert defining_modules([_traced_from(torch.ops.aten.relu.default)]) == [
        "stitch.runtime"
    ]
    twice = _twice_op()
    assert defining_modules([_traced_from(twice.default), _traced_from(twice)]) == [
        "stitch.runtime",
        __name__,
    ]
    # An op defined without one (as an extension's): the model's modules too.
    if not hasattr(torch.ops.stitch_test_placed, "thrice"):
        lib = torch.library.Library("stitch_test_placed", "FRAGMENT")
        lib.define("thrice(Tensor x) -> Tensor")
        _LIBS.append(lib)
    for op in (
        torch.ops.stitch_test_placed.thrice,
        torch.ops.stitch_test_placed.thrice.default,
    ):
        assert defining_modules([_traced_from(op)]) == [
            "stitch.runtime",
            "a_model_package.layers",
        ]


# Libraries defined by the tests, kept alive (a dropped one takes its ops away).
_LIBS: list[Any] = []


class Twice(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.twice = _twice_op()

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.twice(self.inner(ids, positions))

    def reset_kv_caches(self) -> None:
        self.inner.reset_kv_caches()


@pytest.mark.slow
def test_a_piece_a_spawned_worker_cannot_read_stays_uncompiled_naming_the_op(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STITCH_COMPILE_START", "spawn")
    model = Twice(model_for())
    backend, fn = compile_model(model, tiered(tmp_path, compile_workers=1))
    args = inputs(TINY, 4)
    run_fresh(model, fn, args)
    tier = backend.compiled[-1].tier
    serve_until_settled(model, fn, tier)
    timeline = tier.timeline()
    left = timeline["uncompiled"]
    # Only the last piece calls the op; the others, in the same worker, land.
    (last,) = left
    assert set(timeline["swapped_at"]) == set(backend.compiled[-1].backends) - {last}
    for why in left.values():
        assert "spawned compile worker cannot read it" in why
        assert "stitch_test_spawn" in why, why
    warned = [w for w in stitch_warnings(caplog) if "stays uncompiled" in w]
    assert len(warned) == len(left)


def _emulated_backend(config: CompilationConfig) -> tuple[StitchBackend, Any]:
    backend = StitchBackend(
        config, cudagraphs=CUDAGraphManager(config.cudagraphs, ops=EmulatedGraphOps())
    )
    return backend, backend.cudagraphs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["PIECEWISE", "FULL"])
def test_uncompiled_pieces_are_captured_and_recaptured_after_each_swap(
    tmp_path: Path, mode: str
) -> None:
    """NOTE: [uncompiled pieces under CUDA graphs], under emulated graphs: a
    replay runs what was captured, so a landed piece would never be called;
    each landing drops the function's graphs and the next forward captures
    again, swapping in its warm-up call."""
    cfg = LlamaConfig(num_layers=2, hidden_size=72, num_heads=4)
    model = model_for(cfg)
    config = tiered(
        tmp_path,
        cudagraph_mode=mode,
        cudagraph_capture_sizes=[1, 2, 4, 8],
        cudagraph_pad_values={"positions": -1},
    )
    backend, manager = _emulated_backend(config)
    fn = torch.compile(model, backend=backend, fullgraph=True)
    sizes = [3, 3, 8, 2, 5, 6]  # not 1: Dynamo compiles it as a graph of its own
    step = 0

    def forward() -> None:
        nonlocal step
        args = inputs(cfg, sizes[step % len(sizes)])
        step += 1
        got, want = run_fresh(model, fn, args).clone(), run_fresh(model, model, args)
        torch.testing.assert_close(got, want, **INDUCTOR_TOL)

    # A warm-up call, then the capture, pieces uncompiled or not; each landing
    # meanwhile starts the size over with a warm-up.
    for _ in range(20):
        forward()
        if manager.num_captured:
            break
    assert manager.num_captured > 0
    (compiled,) = backend.compiled
    tier = compiled.tier
    assert tier is not None and isinstance(compiled.fn, PaddedRunner)
    graphs = compiled.fn.graphs
    import time

    deadline = time.monotonic() + 240
    while not tier.settled:
        assert time.monotonic() < deadline, tier.timeline()
        forward()
        time.sleep(0.02)
    assert not tier.timeline()["uncompiled"], tier.timeline()
    assert graphs.recaptures == len(compiled.backends)
    # After the last swap, every size in use captures again, with the
    # compiled pieces, and serves the same numbers.
    settled_at = manager.num_captured
    for _ in range(2 * len(sizes)):
        forward()
    assert manager.num_captured > settled_at
    assert all(type(b) is PiecewiseBackend for b in compiled.backends.values())


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_tiered_start_on_a_gpu_swaps_under_cuda_graphs(tmp_path: Path) -> None:
    """On a GPU: spawned workers (the default there), real graphs captured at
    once and again after each swap, eager's numbers at every step."""
    cfg = LlamaConfig(num_layers=2)
    model = model_for(cfg).cuda()
    config = tiered(
        tmp_path,
        cudagraph_mode="PIECEWISE",
        cudagraph_capture_sizes=[1, 2, 4, 8],
        cudagraph_pad_values={"positions": -1},
    )
    backend = StitchBackend(config)
    fn = torch.compile(model, backend=backend, fullgraph=True)
    import time

    def forward(n: int) -> None:
        args = tuple(a.cuda() for a in inputs(cfg, n))
        for a in args:
            torch._dynamo.mark_dynamic(a, 0)
        got, want = run_fresh(model, fn, args).clone(), run_fresh(model, model, args)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)

    forward(3)
    tier = backend.compiled[-1].tier
    assert tier is not None
    deadline, n = time.monotonic() + 300, 0
    while not tier.settled:
        assert time.monotonic() < deadline, tier.timeline()
        forward(2 + n % 7)
        n += 1
    assert not tier.timeline()["uncompiled"], tier.timeline()
    captured = backend.cudagraphs.num_captured
    for k in range(7):
        forward(2 + k)
    assert backend.cudagraphs.num_captured > captured
