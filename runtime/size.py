"""The runtime size (the number of tokens): which symbol it is and where each part reads it.

Found once per compilation (:func:`find_size`) and handed to everything that
needs it: each piece's dispatch (its argument index), the dispatch hoisted into
the emitted function (the graph input), and CUDA graph padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx


@dataclasses.dataclass(frozen=True)
class RuntimeSize:
    """The symbol of the runtime size, and the graph input that carries it.

    ``symbol`` is the sympy symbol of the first graph input that is a plain
    SymInt, else of the first symbolic dimension of an input tensor (graphs
    traced by ``make_fx`` take sizes only inside tensors).  ``size_index`` and
    ``input_name`` locate the SymInt input when there is one (None otherwise).
    """

    symbol: Any
    size_index: int | None
    input_name: str | None

    def piece_argument(self, args: Sequence[Any]) -> int | None:
        """Index of the first argument of a piece that is this size (None: none is)."""
        for i, arg in enumerate(args):
            if isinstance(arg, torch.SymInt) and _plain_symbol(arg) == self.symbol:
                return i
        return None


def find_size(
    graph: fx.GraphModule, example_inputs: Sequence[Any]
) -> RuntimeSize | None:
    """The runtime size of ``graph`` given its (fake) example inputs, if it has one."""
    names = [n.name for n in graph.graph.nodes if n.op == "placeholder"]
    for i, value in enumerate(example_inputs):
        if isinstance(value, torch.SymInt):
            symbol = _plain_symbol(value)
            if symbol is not None:
                name = names[i] if i < len(names) else None
                return RuntimeSize(symbol, i, name)
    for value in example_inputs:
        if isinstance(value, torch.Tensor):
            for dim in value.shape:
                if isinstance(dim, torch.SymInt):
                    symbol = _plain_symbol(dim)
                    if symbol is not None:
                        return RuntimeSize(symbol, None, None)
    return None


def hoisted_input(
    split_gm: fx.GraphModule,
    size: RuntimeSize | None,
    piece_arguments: dict[str, int | None],
) -> str | None:
    """The graph input the emitted function can dispatch on once per forward.

    Hoisting is sound when every dynamic piece takes its size straight from the
    one graph input that carries it; ``piece_arguments`` maps each compiled
    piece to the index of its size argument.
    """
    if size is None or size.input_name is None:
        return None
    hoisted = False
    for node in split_gm.graph.nodes:
        if node.op != "call_module" or node.target not in piece_arguments:
            continue
        index = piece_arguments[node.target]
        if index is None:
            continue
        arg = node.args[index] if index < len(node.args) else None
        if not (isinstance(arg, fx.Node) and arg.op == "placeholder"):
            return None
        if arg.name != size.input_name:
            return None
        hoisted = True
    return size.input_name if hoisted else None


def _plain_symbol(value: torch.SymInt) -> Any:
    expr = value.node.expr
    return expr if getattr(expr, "is_Symbol", False) else None
