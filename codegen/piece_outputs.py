"""Binding a piece call's outputs to readable names in the emitted function.

``a, _, b = submod_1(x)``: one tuple assignment names what is used, each output
named after the value inside the piece, an output reusing the name of an input
that dies at the call.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx

from .body import FunctionBody
from .context import Statement
from .naming import base_name
from .pieces import output_value


class PieceOutputs:
    """What each piece of ``split_gm`` returns, and the binding of its calls."""

    def __init__(self, split_gm: fx.GraphModule) -> None:
        self.split_gm = split_gm
        self._returns: dict[str, Any] = {}  # call_module target -> its output
        self._order: dict[fx.Node, int] | None = None  # top-level graph order

    def bind(self, body: FunctionBody, n: fx.Node, expr: str, comment: str) -> None:
        """``a, _, b = <piece call>``: one tuple assignment names what is used."""
        if not n.users:
            body.emit(Statement("expr", expr, "", comment))
            return
        values = self._outputs(n.target)
        arity = len(values) if isinstance(values, (tuple, list)) else None
        by_index: dict[int, fx.Node] = {}
        for user in n.users:
            index = user.args[1] if len(user.args) == 2 else None
            if (
                arity is None
                or user.op != "call_function"
                or user.target is not operator.getitem
                or user.kwargs
                or user.args[0] is not n
                or type(index) is not int
                or not 0 <= index < arity
                or index in by_index
            ):
                # Not a plain unpacking: bind the whole result, index it below.
                name = body.bind(n, self._result_name(n))
                body.emit(Statement("assign", expr, name, comment))
                return
            by_index[index] = user
        body.unpacked.update(by_index.values())
        live = {i: u for i, u in by_index.items() if u.users}
        if not live:
            body.emit(Statement("expr", expr, "", comment))
            return
        dying = self._dying_at(body, n)
        targets = [
            (
                self._bind_output(body, live[i], self._readable_name(live[i]), dying)
                if i in live
                else "_"
            )
            for i in range(arity)
        ]
        if arity == 1:
            body.emit(Statement("assign", f"{expr}[0]", targets[0], comment))
        else:
            body.emit(Statement("assign", expr, ", ".join(targets), comment))

    def _dying_at(self, body: FunctionBody, n: fx.Node) -> dict[str, str]:
        """Names of values bound in ``body`` that node ``n`` reads for the last
        time, by base name (``x_2`` -> ``x``)."""
        if self._order is None:
            self._order = {node: i for i, node in enumerate(self.split_gm.graph.nodes)}
        order = self._order
        dying: dict[str, str] = {}
        for value in n.all_input_nodes:
            name = body.names.get(value)
            if name is None or not body.is_bound(name):
                continue
            if max(order[u] for u in value.users) == order[n]:
                dying.setdefault(base_name(name), name)
        return dying

    @staticmethod
    def _bind_output(
        body: FunctionBody, node: fx.Node, candidate: str, dying: dict[str, str]
    ) -> str:
        # NOTE: [a piece's output takes the name of the input it replaces]
        # ``x = submod_2(x)``, as a person writes ``x = layer(x)``: an output
        # named like an input that dies at this call (same name but for the
        # numeric suffix) takes that input's name, which frees the input
        # without a del.
        reused = dying.pop(base_name(candidate), None)
        if reused is not None:
            return body.rebind(node, reused)
        return body.bind(node, candidate)

    def _outputs(self, target: str) -> Any:
        """What the GraphModule of piece ``target`` returns (None if unknown)."""
        if target not in self._returns:
            # The GraphModule itself, even where a compiled piece shadows it.
            module = self.split_gm._modules.get(target)
            self._returns[target] = (
                output_value(module) if isinstance(module, fx.GraphModule) else None
            )
        return self._returns[target]

    def _result_name(self, n: fx.Node) -> str:
        """A piece's whole result is named after the value it returns, if one,
        else ``<piece>_outputs`` (``submod_3`` itself names the piece)."""
        value = self._outputs(n.target)
        if isinstance(value, fx.Node):
            return value.name
        return f"{n.target}_outputs"

    def _readable_name(self, n: fx.Node) -> str:
        """A piece output is named after the value inside the piece (``q``, ``out``)
        rather than FX's ``getitem_7``."""
        source, index = n.args
        values = self._outputs(source.target)
        if isinstance(values, (tuple, list)) and isinstance(values[index], fx.Node):
            return values[index].name
        return n.name
