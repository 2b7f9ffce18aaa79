"""Models and faults for the check's tests (tests/test_check.py, test_check_hf.py).

Each fault is real: the check runs the faulty piece as served and must name it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from stitch.runtime.check import Forward
from stitch.runtime.compat.dynamo import mark_unbacked
from stitch.runtime.examples import LlamaConfig, llama_inputs
from stitch.runtime.passes import InductorPass


def llama_forwards(
    cfg: LlamaConfig, calls: Sequence[tuple[int, int]], device: Any = "cpu"
) -> list[Forward]:
    """One forward per ``(tokens, seed)``, its token dimension unbacked (one
    graph for every size, as ``stitch run --example`` compiles)."""
    forwards = []
    for n, seed in calls:
        ids, positions = llama_inputs(cfg, n, seed=seed, device=device)
        mark_unbacked(ids, 0)
        mark_unbacked(positions, 0)
        forwards.append(Forward(n, (ids, positions)))
    return forwards


def _in_module(node: fx.Node, module: str) -> bool:
    """Whether ``node`` runs in the module at path ``module`` or below it."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = ["." + str(v[0] if isinstance(v, tuple) else v) for v in stack.values()]
    return any(p.endswith(f".{module}") or f".{module}." in p for p in paths)


class MulToAdd(InductorPass):
    """A wrong rewrite: the first multiplication under ``module`` becomes an
    addition, in the one piece that holds that module."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __call__(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            if node.target is torch.ops.aten.mul.Tensor and _in_module(
                node, self.module
            ):
                node.target = torch.ops.aten.add.Tensor
                return

    def options(self) -> dict[str, Any]:
        return {"module": self.module}


class MatmulsInBF16(InductorPass):
    """Looser numerics under ``module``: its matrix products computed in
    bfloat16 (inputs rounded, the product cast back), as a precision-lowering
    pass would."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __call__(self, graph: fx.Graph) -> None:
        aten, convert = torch.ops.aten, torch.ops.prims.convert_element_type.default
        for node in list(graph.nodes):
            if node.target is not aten.mm.default or not _in_module(node, self.module):
                continue
            with graph.inserting_before(node):
                low = [
                    graph.call_function(convert, (a, torch.bfloat16)) for a in node.args
                ]
                product = graph.call_function(aten.mm.default, tuple(low))
                back = graph.call_function(convert, (product, torch.float32))
            for n in (*low, product, back):
                n.meta.update(node.meta)
            node.replace_all_uses_with(back)
            graph.erase_node(node)

    def options(self) -> dict[str, Any]:
        return {"module": self.module}


class Harmless(InductorPass):
    """A pass that rewrites nothing (the search must not name it)."""

    def __call__(self, graph: fx.Graph) -> None:
        pass


class ReadsStale:
    """A compiled piece that, like a CUDA graph replayed on moved inputs,
    computes from the tensors of its first call at each shape, whatever it is
    given later."""

    def __init__(self, piece: Any) -> None:
        self.piece = piece
        self.first: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def __call__(self, *args: Any) -> Any:
        shapes = tuple(
            tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args
        )
        return self.piece(*self.first.setdefault(shapes, args))


# -- a model whose splitting op allocates its output --------------------------------

# Every output the op gave, kept: each call's output is at a new address (on a
# GPU too, where the caching allocator would otherwise hand a freed block back).
KEPT: list[torch.Tensor] = []


@torch.library.custom_op("stitch_check_test::fresh", mutates_args=())
def fresh(x: torch.Tensor) -> torch.Tensor:
    out = x * 2
    KEPT.append(out)
    return out


@fresh.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


# The number of calls so far: the op gives other numbers at every call.
DRIFT = [0]


@torch.library.custom_op("stitch_check_test::drift", mutates_args=())
def drift(x: torch.Tensor) -> torch.Tensor:
    DRIFT[0] += 1
    return x + DRIFT[0]


@drift.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Toy(nn.Module):
    """embed -> up -> ``op`` (the splitting op) -> down: two compiled pieces."""

    def __init__(self, op: str = "fresh", vocab: int = 32, hidden: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(vocab, hidden)
        self.up = nn.Linear(hidden, hidden)
        self.down = nn.Linear(hidden, hidden)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.op = getattr(torch.ops.stitch_check_test, op)
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(self.embed(ids)))
        return self.down(self.op(x)) + x

    def forwards(self, calls: Sequence[tuple[int, int]], device: Any = "cpu") -> list:
        out = []
        for n, seed in calls:
            gen = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, self.vocab, (n,), generator=gen).to(device)
            mark_unbacked(ids, 0)
            out.append(Forward(n, (ids,)))
        return out
