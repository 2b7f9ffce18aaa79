"""What stock ``torch.compile(dynamic=True)`` compiles, Stitch compiles with Inductor pieces.

Graphs with floats Dynamo lifted to inputs (a LayerNorm's ``eps``, read with
``.item()``), SymFloats computed from sizes that cross a splitting op, a
``.item()`` of an intermediate tensor, graph breaks (several graphs), and
``nn.TransformerEncoder``.  transformers models, static KV caches included,
are in ``test_hf.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from stitch.codegen import split_graph
from stitch.runtime import StitchBackend
from stitch.runtime.pipeline.fakes import backend_fake_inputs

from backend_support import INDUCTOR_TOL, counting


@pytest.fixture(scope="module", autouse=True)
def dynamo_state() -> Any:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)  # eps: lifted to a 0-d input under dynamic=True
        self.qkv = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        # A SymFloat made from a SymInt before the attention, used after it.
        gain = math.sqrt(n) / 4.0
        q = self.qkv(self.norm(x)).view(batch, n, 2, 8).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        return x + self.out(a.transpose(1, 2).reshape(batch, n, 16)) * gain


class Model(nn.Module):
    """Two blocks with a graph break between them: two graphs for one backend."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](x)
        torch._dynamo.graph_break()
        return self.blocks[1](x)


class Compiled:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = Model().eval()
        # Inductor's compiles counted, in the backend call.
        self.backend = StitchBackend(disable_cache=True, tiered_start=False)
        compiled = torch.compile(self.model, backend=self.backend, dynamic=True)
        self.results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with counting() as self.deltas, torch.no_grad():
            for n in (3, 5, 9):
                x = torch.randn(2, n, 16)
                self.results[n] = (self.model(x), compiled(x))


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return Compiled()


@pytest.mark.slow
def test_lifted_floats_symfloats_and_graph_breaks_match_eager(
    compiled: Compiled,
) -> None:
    for n, (ref, out) in compiled.results.items():
        torch.testing.assert_close(out, ref, **INDUCTOR_TOL, msg=f"length {n}")
    # One graph per side of the break, each split at its attention.
    assert len(compiled.backend.compiled) == 2
    for result in compiled.backend.compiled:
        assert [r.splitting for r in result.reports] == [False, True, False]


@pytest.mark.slow
def test_no_inductor_compile_is_wasted_on_a_restart(compiled: Compiled) -> None:
    # The lifted eps is specialized before any piece compiles (lifted_floats.py), so
    # each compiled piece is compiled exactly once.
    pieces = sum(len(r.backends) for r in compiled.backend.compiled)
    assert compiled.deltas["num_inductor_compiles"] == pieces == 4
    assert compiled.deltas["num_backend_compilations"] == 2


def test_a_symfloat_is_computed_in_the_piece_that_uses_it() -> None:
    graphs: list[fx.GraphModule] = []

    def keep(gm: fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(Block(), backend=keep, dynamic=True)(torch.randn(2, 3, 16))
    (gm,) = graphs
    _, items = split_graph(gm, ["aten::scaled_dot_product_attention"])
    assert [i.is_splitting_graph for i in items] == [False, True, False]
    made_in = {}
    for item in items:
        for node in item.graph.graph.nodes:
            value = node.meta.get("example_value")
            if node.op == "call_function" and isinstance(value, torch.SymFloat):
                made_in[node.name] = item.graph_id
            if node.op == "output" and not item.is_splitting_graph:
                outputs = fx.node.map_arg(
                    node.args, lambda n: n.meta.get("example_value")
                )
                flat = torch.utils._pytree.tree_leaves(outputs)
                assert not any(isinstance(v, (torch.SymFloat, float)) for v in flat)
    # sqrt(n) / 4 is made from a SymInt before the attention, used after it.
    assert made_in and set(made_in.values()) == {items[-1].graph_id}


def test_item_of_an_intermediate_tensor_and_of_a_mutated_input() -> None:
    def f(x: torch.Tensor, t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        scale = (t * 2).sum().item()  # an unbacked SymFloat, made before the split
        offset = step.item()  # read before step changes, used after the attention
        step.add_(1.0)
        a = F.scaled_dot_product_attention(x, x, x)
        return a * scale + offset

    torch._dynamo.reset()
    backend = StitchBackend(disable_cache=True)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(f, backend=backend, dynamic=True)
        x, t = torch.randn(1, 2, 5, 8), torch.randn(4)
        step, step_ref = torch.tensor(3.0), torch.tensor(3.0)
        torch.testing.assert_close(
            compiled(x, t, step), f(x, t, step_ref), **INDUCTOR_TOL
        )
        assert step.item() == step_ref.item() == 4.0
    assert [r.splitting for r in backend.compiled[0].reports] == [False, True, False]


def test_transformer_encoder() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    encoder = nn.TransformerEncoder(
        layer, num_layers=2, enable_nested_tensor=False
    ).eval()
    torch._dynamo.reset()
    compiled = torch.compile(
        encoder, backend=StitchBackend(disable_cache=True), dynamic=True
    )
    with torch.no_grad():
        for n in (3, 6):
            x = torch.randn(2, n, 16)
            torch.testing.assert_close(compiled(x), encoder(x), **INDUCTOR_TOL)


def test_piece_inputs_are_faked_in_the_tracing_context_mode() -> None:
    seen: list[list[Any]] = []

    def keep(gm: fx.GraphModule, example_inputs: Any) -> Any:
        mode = torch._guards.TracingContext.get().fake_mode
        fakes = backend_fake_inputs(gm, example_inputs)
        seen.append(
            [
                (f.fake_mode is mode, f.item_memo)
                for f in fakes
                if isinstance(f, torch.Tensor)
            ]
        )
        return gm.forward

    norm = nn.LayerNorm(4)
    torch._dynamo.reset()
    torch.compile(norm, backend=keep, dynamic=True)(torch.randn(3, 4))
    (fakes,) = seen
    assert all(same_mode for same_mode, _ in fakes)
    # Dynamo lifted eps to a 0-d tensor read with .item(): its fake knows the symbol.
    memos = [memo for _, memo in fakes if memo is not None]
    assert len(memos) == 1 and isinstance(memos[0], torch.SymFloat)


@pytest.mark.slow
def test_lifted_floats_take_one_trace_and_guard_their_values(tmp_path: Any) -> None:
    # NOTE: [lifted floats are specialized up front] (lifted_floats.py): made constants
    # in the graph Dynamo handed over, so Dynamo traces the frame once.
    class Counted(StitchBackend):
        calls = 0

        def __call__(self, gm: fx.GraphModule, example_inputs: Any) -> Any:
            Counted.calls += 1
            return super().__call__(gm, example_inputs)

    torch.manual_seed(0)
    block = Block().eval()
    x = torch.randn(2, 5, 16)

    def run() -> tuple[Counted, torch.Tensor]:
        torch._dynamo.reset()
        Counted.calls = 0
        # Warm or cold read: every piece compiled in the backend call.
        backend = Counted(cache_dir=str(tmp_path), tiered_start=False)
        with torch.no_grad():
            out = torch.compile(block, backend=backend, dynamic=True)(x)
            torch.testing.assert_close(out, block(x), **INDUCTOR_TOL)
        return backend, out

    cold, _ = run()
    assert Counted.calls == 1 and not cold.compiled[-1].warm
    # A second trace (here after a reset, or in another process) makes the same
    # graph: the same entry, warm.
    warm, _ = run()
    assert Counted.calls == 1 and warm.compiled[-1].warm
    # The value is guarded: another eps is another graph, with its own numbers.
    block.norm.eps = 0.5
    changed, _ = run()
    assert Counted.calls == 1 and not changed.compiled[-1].warm
