"""A landed piece swaps in without its next call (NOTE: [a landed piece swaps
without its next call], runtime/pipeline/tiered/swap.py), with inputs kept at
its first call or at Dynamo's first forward (NOTE: [the first forward
rehearsed], rehearsal.py)."""

from __future__ import annotations

import json
import operator
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.fx as fx
from test_tiered import (  # noqa: F401
    TIERED_SCRIPT,
    _fresh_dynamo,
    entry_index,
    run_script,
    tiered,
)

from stitch.codegen.pieces import mutates
from stitch.runtime.pipeline.piecewise import PiecewiseBackend
from stitch.runtime.pipeline.tiered import swap
from stitch.runtime.pipeline.tiered.rehearsal import keep_graph_inputs, written_inputs
from stitch.runtime.pipeline.tiered.swap import (
    KEEP_BYTES,
    KeptInputs,
    keep_inputs,
    not_local,
)

from backend_support import (
    INDUCTOR_TOL,
    TINY,
    compile_model,
    inputs,
    model_for,
    run_fresh,
)

WAIT_S = 300.0


def _tier(mutating: bool = False, cuda_graphs: Any = None, graph: Any = None) -> Any:
    graph = graph if graph is not None else fx.symbolic_trace(lambda x: x * 2)
    return SimpleNamespace(
        cuda_graphs=cuda_graphs,
        mutating={"p": mutating},
        graphs={"p": graph},
        kept_bytes=0,
    )


def test_kept_inputs_copy_what_the_next_pieces_write_and_reference_weights() -> None:
    weight = torch.nn.Parameter(torch.randn(4, 4), requires_grad=False)
    hidden, size = torch.randn(3, 4), 3
    with torch.no_grad():
        kept = keep_inputs(_tier(), "p", (hidden, weight, size))
    assert isinstance(kept, KeptInputs) and not kept.inference
    copy, ref, same = kept.args
    assert copy is not hidden and torch.equal(copy, hidden)
    assert ref is weight and same == size
    hidden.add_(1)  # a later piece writes it: the copy keeps the call's values
    assert not torch.equal(copy, hidden)
    # A piece that writes its inputs gets copies of its weights too.
    with torch.no_grad():
        kept = keep_inputs(_tier(mutating=True), "p", (hidden, weight))
    assert isinstance(kept, KeptInputs) and kept.args[1] is not weight
    with torch.inference_mode():
        kept = keep_inputs(_tier(), "p", (torch.randn(2),))
    assert isinstance(kept, KeptInputs) and kept.inference
    # The pieces of one tier keep KEEP_BYTES together.
    tier, half = _tier(), torch.empty(KEEP_BYTES // 8)  # float32: half of it
    with torch.no_grad():
        assert isinstance(keep_inputs(tier, "p", (half,)), KeptInputs)
        assert isinstance(keep_inputs(tier, "p", (half,)), KeptInputs)
        assert keep_inputs(tier, "p", (torch.empty(1),)) is False
    assert tier.kept_bytes == KEEP_BYTES


@pytest.mark.parametrize(
    "why", ["grad", "autocast", "graphs", "device", "subclass", "too big", "not local"]
)
def test_inputs_are_not_kept_where_a_second_thread_could_differ(why: str) -> None:
    tier, args = _tier(), (torch.randn(2, 2),)
    if why == "graphs":
        tier = _tier(cuda_graphs=object())
    elif why == "device":
        args = (torch.empty(2, 2, device="meta"),)
    elif why == "subclass":
        args = (torch.randn(2, 2).as_subclass(_Marked),)
    elif why == "too big":
        args = (torch.empty(KEEP_BYTES // 4 + 1),)
    elif why == "not local":
        tier = _tier(graph=_not_local_graph())
    grad = torch.enable_grad() if why == "grad" else torch.no_grad()
    cast = torch.autocast("cpu", enabled=why == "autocast")
    with grad, cast:
        assert keep_inputs(tier, "p", args) is False


class _Marked(torch.Tensor):
    pass


def _not_local_graph() -> fx.GraphModule:
    """A graph calling an op outside aten, prims and stitch."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.quantized.linear_dynamic, (x, x)))
    return fx.GraphModule(torch.nn.Module(), graph)


def _differs_at(name: str) -> Any:
    real = swap.compiled_backend

    def compiled_backend(tier: Any, piece: str, record: Any) -> PiecewiseBackend:
        backend = real(tier, piece, record)
        if piece == name:
            general = backend.general
            backend.general = lambda *a: _plus_one(general(*a))
            backend._by_size.clear()
            backend.runnable_for = lambda size: backend.general  # type: ignore[method-assign]
        return backend

    return compiled_backend


def _plus_one(out: Any) -> Any:
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        return out + 1
    if isinstance(out, (tuple, list)):
        return type(out)(_plus_one(o) for o in out)
    return out


def test_pieces_swap_in_or_are_refused_when_they_land_without_a_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forwards until every piece has run uncompiled once (its inputs kept),
    then none: each piece that lands is checked and swapped in on a thread
    of its own, and the one whose compiled form differs is refused there,
    recorded in the entry so that no later start runs it."""
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path))
    run_fresh(model, fn, inputs(TINY, 5))
    tier = backend.compiled[-1].tier
    wrong = sorted(tier.backends)[1]
    monkeypatch.setattr(swap, "compiled_backend", _differs_at(wrong))
    deadline = time.monotonic() + WAIT_S
    while not all(
        b.__dict__.get("_inputs") is not None for b in tier.backends.values()
    ):
        assert time.monotonic() < deadline, tier.timeline()
        args = inputs(TINY, 4)
        torch.testing.assert_close(
            run_fresh(model, fn, args), run_fresh(model, model, args), **INDUCTOR_TOL
        )
    assert all(isinstance(b._inputs, KeptInputs) for b in tier.backends.values())
    # No forward from here on.
    while not tier.settled:
        assert time.monotonic() < deadline, tier.timeline()
        time.sleep(0.05)
    line = tier.timeline()
    assert set(line["swapped_at"]) == set(tier.backends) - {wrong}, line
    assert "differs from it" in line["uncompiled"][wrong], line
    for name, at in line["swapped_at"].items():
        assert at >= line["compiled_at"][name], line
    assert all(type(b) is PiecewiseBackend for b in tier.backends.values())
    assert not any("_inputs" in b.__dict__ for b in tier.backends.values())
    assert entry_index(tmp_path).refused, "the refusal is recorded in the entry"
    for n in (3, 6):
        args = inputs(TINY, n)
        torch.testing.assert_close(
            run_fresh(model, fn, args), run_fresh(model, model, args), **INDUCTOR_TOL
        )


def test_a_piece_whose_inputs_were_not_kept_swaps_at_its_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(swap, "KEEP_BYTES", 0)
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path))
    run_fresh(model, fn, inputs(TINY, 5))
    tier = backend.compiled[-1].tier
    deadline = time.monotonic() + WAIT_S

    def called(b: Any) -> bool:  # ran uncompiled once, or swapped in by a call
        return b.__dict__.get("_inputs") is False or type(b) is PiecewiseBackend

    while not all(called(b) for b in tier.backends.values()):
        assert time.monotonic() < deadline, tier.timeline()
        run_fresh(model, fn, inputs(TINY, 4))
    assert tier.wait(WAIT_S), tier.timeline()
    swapped = set(tier.timeline()["swapped_at"])
    assert swapped != set(tier.backends), "every piece landed before it ran"
    time.sleep(0.5)
    assert set(tier.timeline()["swapped_at"]) == swapped, "none swaps without a call"
    while not tier.settled:
        assert time.monotonic() < deadline, tier.timeline()
        args = inputs(TINY, 2 + len(tier.timeline()["swapped_at"]))
        torch.testing.assert_close(
            run_fresh(model, fn, args), run_fresh(model, model, args), **INDUCTOR_TOL
        )
    assert not tier.timeline()["uncompiled"]


# NOTE: [the first forward rehearsed] (runtime/pipeline/tiered/rehearsal.py)


def _cache_write() -> fx.GraphModule:
    """``cache[0] = x; cache.narrow(0, 1, 1).copy_(x); out = torch.zeros(4);
    out.copy_(x @ w)``: it writes input 1, once through a view, and a tensor
    it made."""
    graph = fx.Graph()
    x, cache, w = (graph.placeholder(n) for n in ("x", "cache", "w"))
    graph.call_function(operator.setitem, (cache, 0, x))
    row = graph.call_method("narrow", (cache, 0, 1, 1))
    graph.call_method("copy_", (row, x))
    out = graph.call_function(torch.zeros, (4,))
    graph.call_method("copy_", (out, graph.call_function(torch.matmul, (x, w))))
    graph.output(out)
    return fx.GraphModule(torch.nn.Module(), graph)


def test_the_inputs_a_graph_writes_are_found_through_views() -> None:
    gm = _cache_write()
    assert written_inputs(gm) == {1}
    # An ``out=`` and an in-place operator write too (and make a piece mutate).
    graph = fx.Graph()
    x, cache, w = (graph.placeholder(n) for n in ("x", "cache", "w"))
    graph.call_function(torch.add, (x, x), {"out": cache})
    graph.output(graph.call_function(operator.iadd, (w, x)))
    written = fx.GraphModule(torch.nn.Module(), graph)
    assert written_inputs(written) == {1, 2} and mutates(written)
    assert not mutates(fx.symbolic_trace(lambda x: x * 2))
    weight = torch.nn.Parameter(torch.randn(4, 4), requires_grad=False)
    x, cache = torch.randn(4), torch.zeros(2, 4)
    with torch.no_grad():
        kept = keep_graph_inputs(gm, (x, cache, weight))
    assert kept is not None
    assert kept.args[0] is not x and kept.args[1] is not cache
    assert kept.args[2] is weight  # a weight it does not write is referenced
    # One that writes its weight copies it.
    gm = fx.symbolic_trace(lambda x, cache, w: w.add_(x))
    with torch.no_grad():
        kept = keep_graph_inputs(gm, (x, cache, weight))
    assert kept is not None and kept.args[2] is not weight


def _counting_graph() -> fx.GraphModule:
    """``self.seen.add_(1); return x * 2``: it writes an attribute of its module."""
    root = torch.nn.Module()
    root.register_buffer("seen", torch.zeros(1))
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.call_method("add_", (graph.get_attr("seen"), 1))
    graph.output(graph.call_function(operator.mul, (x, 2)))
    return fx.GraphModule(root, graph)


@pytest.mark.parametrize("why", ["grad", "module state", "not local"])
def test_a_graph_is_not_rehearsed_where_it_could_reach_past_its_inputs(
    why: str,
) -> None:
    gm = fx.symbolic_trace(lambda x: x * 2)
    if why == "module state":
        gm = _counting_graph()
        assert written_inputs(gm) is None
    elif why == "not local":  # as a collective or vLLM's attention would be
        gm = _not_local_graph()
        assert not_local(gm) == "quantized::linear_dynamic"
    grad = torch.enable_grad() if why == "grad" else torch.no_grad()
    with grad:
        assert keep_graph_inputs(gm, (torch.randn(2),)) is None


def test_a_graph_called_once_swaps_in_every_piece_without_a_second_call(
    tmp_path: Path,
) -> None:
    """The first forward runs Dynamo's graph; the build rehearses it on a copy
    of its inputs, so every piece keeps inputs and swaps in as it lands,
    though the graph is never called again.  The rehearsal writes only its
    copies: the model's KV caches keep what the first forward wrote."""
    model = model_for()
    backend, fn = compile_model(model, tiered(tmp_path))
    args = inputs(TINY, 5)
    torch.testing.assert_close(
        run_fresh(model, fn, args), run_fresh(model, model, args), **INDUCTOR_TOL
    )
    model.reset_kv_caches()
    with torch.no_grad():
        fn(*inputs(TINY, 6))
    caches = [t.clone() for t in model.buffers()]
    tier = backend.compiled[-1].tier  # waits for the build and its rehearsal
    assert all(torch.equal(a, b) for a, b in zip(caches, model.buffers(), strict=True))
    deadline = time.monotonic() + WAIT_S
    while not tier.settled:
        assert time.monotonic() < deadline, tier.timeline()
        time.sleep(0.05)
    line = tier.timeline()
    assert set(line["swapped_at"]) == set(tier.backends) and not line["uncompiled"]
    assert all(type(b) is PiecewiseBackend for b in tier.backends.values())
    for n in (3, 7):
        args = inputs(TINY, n)
        torch.testing.assert_close(
            run_fresh(model, fn, args), run_fresh(model, model, args), **INDUCTOR_TOL
        )


EXITS_AT_THE_LAST_SWAP = TIERED_SCRIPT + """
def publish() -> None:  # as the fleet's publish does, a while after the swap
    time.sleep(1.0)
    print("published", flush=True)
def complete(ok: bool) -> None:  # as the saved forward's write does
    print(json.dumps([threading.current_thread().name, ok]), flush=True)
    time.sleep(1.0)
    threading.Thread(target=publish).start()
tier.when_complete(complete)
while not tier.settled:
    time.sleep(0.01)
"""


def test_what_waits_for_a_last_swap_made_off_the_serving_thread_ends_before_the_exit(
    tmp_path: Path,
) -> None:
    """NOTE: [the last swap's work is not cut off at exit]: the script ends
    as soon as its tier settles, the last piece swapped in by a landing
    thread; what that swap runs, and the thread it starts, finish first."""
    done = run_script(EXITS_AT_THE_LAST_SWAP, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "published", (done.stdout, done.stderr[-3000:])
    thread, ok = json.loads(lines[-2])
    assert ok and thread.startswith("stitch-swap-"), thread
