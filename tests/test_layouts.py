"""Which inputs a compiled piece restrides (NOTE: [piece inputs restrided to
their compiled layout] in stitch.runtime.pipeline.layouts), on a split graph
built by hand: one piece's outputs feed the next, one with strides that hold an
unbacked size and one with static strides."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from stitch.runtime.pipeline.layouts import dense_order, fed_layouts, guard_layouts


def _piece(examples: list[torch.Tensor]) -> fx.GraphModule:
    graph = fx.Graph()
    names = []
    for i, example in enumerate(examples):
        node = graph.placeholder(f"arg{i}")
        node.meta["val"] = example
        names.append(node)
    graph.output(tuple(names))
    return fx.GraphModule(torch.nn.Module(), graph)


def _split_graph(transposed: torch.Tensor, static: torch.Tensor) -> fx.GraphModule:
    """x -> submod_0 -> (transposed, static) -> submod_1."""
    root = torch.nn.Module()
    root.submod_0 = _piece([static])
    root.submod_1 = _piece([transposed, static])
    graph = fx.Graph()
    x = graph.placeholder("x")
    made = graph.call_module("submod_0", (x,))
    first = graph.call_function(operator.getitem, (made, 0))
    second = graph.call_function(operator.getitem, (made, 1))
    graph.output(graph.call_module("submod_1", (first, second)))
    return fx.GraphModule(root, graph)


def _examples():
    env = ShapeEnv()
    with FakeTensorMode(shape_env=env):
        u = env.create_unbacked_symint()
        # GPT-OSS's rotary cos as traced: [1, tokens, 8], a transpose of
        # [1, 8, tokens] (strides 8*u, 1, u).
        transposed = torch.empty(1, 8, u).transpose(1, 2)
        static = torch.empty(2, 3)
    return transposed, static


def test_unbacked_strides_have_the_order_of_a_large_size():
    transposed, static = _examples()
    assert dense_order(transposed) == (0, 2, 1)
    assert dense_order(static) == (0, 1)


def test_a_compiled_piece_output_is_checked_only_with_unbacked_strides():
    transposed, static = _examples()
    split_gm = _split_graph(transposed, static)
    # submod_0 compiled: Inductor keeps its static strides, not the unbacked ones.
    assert fed_layouts(split_gm, set()) == {"submod_1": [(0, (0, 2, 1))]}
    # submod_0 a splitting piece (an eager op): both outputs are checked.
    assert fed_layouts(split_gm, {"submod_0"}) == {
        "submod_1": [(0, (0, 2, 1)), (1, (0, 1))]
    }


def test_the_guard_restrides_what_differs_and_passes_the_rest():
    transposed, _ = _examples()
    seen = []
    call = guard_layouts(
        lambda a, b: seen.append((a, b)), [(0, dense_order(transposed))]
    )
    contiguous = torch.arange(5 * 8.0).reshape(1, 5, 8)  # what Inductor returned
    other = torch.ones(2, 3)
    call(contiguous, other)
    [(a, b)] = seen
    assert a.stride() == (40, 1, 5) and torch.equal(a, contiguous)
    assert b is other
    # Already in the layout: passed as it is.
    laid_out = torch.empty(1, 8, 5).transpose(1, 2)
    call(laid_out, other)
    assert seen[1][0] is laid_out
