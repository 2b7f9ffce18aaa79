"""Lower the split graph's piece calls, and each plain node, to statements.

A piece is called through ``__vllm_submods__`` (or the dispatch table), written
at its call site when it is one op, or run by a module-level function (one per
structure) when it is inlined.  :class:`PieceLowering` holds what the walk
gathers (constants, globals, the pieces called and the functions made);
execution.py's lowering builds the module and its main function on it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from stitch.core.contract import RANGES_NAME
from stitch.core.errors import StitchCodegenError

from .body import FunctionBody
from .context import PieceFunction, Statement
from .expressions import kwargs_source, node_expression
from .fingerprint import structural_hash
from .module_globals import ModuleGlobals
from .piece_outputs import PieceOutputs
from .pieces import (
    fetch_attr,
    is_inlined_piece,
    module_path_of,
    output_value,
    reading_module,
    single_call,
)
from .readable import readable_names
from .values import ConstTable, render_string, render_value


class PieceLowering:
    """The walk's state, and the statements of piece calls and plain nodes."""

    def __init__(self, split_gm: fx.GraphModule, profile: bool = False) -> None:
        self.split_gm = split_gm
        self.profile = profile
        self.consts = ConstTable()
        self.submod_names: list[str] = []
        self._submod_index: dict[str, int] = {}
        # Local name of compiled piece i in execution_fn (``submod_3``).
        self._submod_locals: list[str] = []
        self.globals = ModuleGlobals(self.consts)
        self.outputs = PieceOutputs(split_gm)
        self._functions: list[PieceFunction] = []
        self._function_of: dict[str, str] = {}  # piece -> function it runs in
        self._by_structure: dict[tuple[Any, ...], PieceFunction] = {}
        self._n_inlined = 0
        self._pieces: dict[str, Any] = {}  # call_module target -> the piece
        self._readable: dict[str, str] = {}  # placeholder -> its readable name

    def _piece(self, node: fx.Node) -> Any:
        """The module a top-level ``call_module`` node calls, fetched once."""
        if node.target not in self._pieces:
            self._pieces[node.target] = fetch_attr(self.split_gm, node.target, node)
        return self._pieces[node.target]

    def _attribute(self, gm: fx.GraphModule, node: fx.Node) -> str:
        """The constants slot of ``get_attr`` node ``node`` of ``gm``."""
        value = fetch_attr(gm, node.target, node)
        return self.consts.ref(value, node.target, reading_module(node))

    # -- pieces -----------------------------------------------------------------
    def _piece_call(self, body: FunctionBody, n: fx.Node) -> None:
        module = self._piece(n)
        # The piece's own GraphModule names the modules it covers, also where a
        # compiled runnable shadows it (a finished compile's split graph).
        graph = self.split_gm._modules.get(n.target, module)
        path = module_path_of(graph) if isinstance(graph, fx.GraphModule) else ""
        if not self.profile:
            self._lower_piece_call(body, n, module, path)
            return
        # NOTE: [the profiling variant]
        # Profiling runs a second emitted variant of the same function rather
        # than a branch per piece in the one that serves: each piece call sits
        # between begin(piece, module path) and end(), plain statements that keep
        # the layout of the serving source.  A del after the call follows end(),
        # so freeing values counts as stitching, not as the piece.
        body.emit(
            Statement(
                "expr",
                f"{RANGES_NAME}.begin({render_string(n.target)}, {render_string(path)})",
            )
        )
        self._lower_piece_call(body, n, module, path)
        body.emit(Statement("expr", f"{RANGES_NAME}.end()"), range_end=True)

    def _lower_piece_call(
        self, body: FunctionBody, n: fx.Node, module: Any, path: str
    ) -> None:
        if is_inlined_piece(module):
            self._n_inlined += 1
            op = single_call(module)
            output = output_value(module)
            if (
                op is not None
                and (output is op or not n.users)
                and len(n.args)
                == sum(p.op == "placeholder" for p in module.graph.nodes)
                and not n.kwargs
            ):
                self._call_site(body, n, module, op, output is op, path)
                return
            callee = self._piece_function(n, module, path)
        else:
            if n.target not in self._submod_index:
                self._submod_index[n.target] = len(self.submod_names)
                self.submod_names.append(n.target)
                self._submod_locals.append(body.local.create(n.target))
            callee = self._submod_locals[self._submod_index[n.target]]
        args = ", ".join(
            [body.render(a) for a in n.args] + kwargs_source(n, body.render)
        )
        self.outputs.bind(body, n, f"{callee}({args})", path)

    def _call_site(
        self,
        body: FunctionBody,
        n: fx.Node,
        module: fx.GraphModule,
        op: fx.Node,
        returns_op: bool,
        comment: str,
    ) -> None:
        # NOTE: [a one-op piece runs at its call site]
        # A splitting piece that is a single op call is written where the piece
        # is called, its placeholders replaced by the call's arguments: no
        # function, no extra frame per layer.
        placeholders = [p for p in module.graph.nodes if p.op == "placeholder"]
        argument = dict(zip(placeholders, n.args, strict=False))

        def name_of(node: fx.Node) -> str:
            if node in argument:
                return body.render(argument[node])
            if node.op == "get_attr":
                return self._attribute(module, node)
            raise StitchCodegenError(
                f"argument refers to node '{node.name}', which is not defined before "
                f"its use in {n.target}",
                node,
            )

        expr = self._expression(module, op, name_of, top_level=False)
        if returns_op and n.users:
            body.emit(Statement("assign", expr, body.bind(n, op.name), comment))
        else:
            body.emit(Statement("expr", expr, "", comment))

    def _piece_function(self, n: fx.Node, module: fx.GraphModule, path: str) -> str:
        """The module-level function that runs piece ``n.target``."""
        if n.target in self._function_of:
            return self._function_of[n.target]
        name = self.globals.function_names[n.target]
        self.globals.targets_log, self.consts.log = [], []
        try:
            body = FunctionBody(self.globals.names.child(), self.consts, name)
            inputs = [p for p in module.graph.nodes if p.op == "placeholder"]
            # The piece's inputs carry the split graph's names: named alike.
            readable = {**readable_names(inputs), **self._readable}
            for node in module.graph.nodes:
                if node.op == "placeholder":
                    body.param(node, readable.get(node.name))
                elif node.op == "get_attr":
                    body.names[node] = self._attribute(module, node)
                elif node.op == "output":
                    body.emit(Statement("return", body.render(node.args[0])))
                else:
                    self._node(module, node, body, top_level=False)
            # NOTE: [one function per structure]
            # Pieces with the same structure (same structural hash) that also read
            # the same call targets and constants compute the same thing with the
            # same code: the first one's function serves them all.
            key = (
                structural_hash(module),
                tuple(self.globals.targets_log),
                tuple(self.consts.log),
            )
        finally:
            self.globals.targets_log, self.consts.log = None, None
        shared = self._by_structure.get(key)
        if shared is None:
            shared = PieceFunction(
                name, n.target, path, ", ".join(body.params), body.body()
            )
            self._by_structure[key] = shared
            self._functions.append(shared)
        else:
            shared.shared += 1
        self._function_of[n.target] = shared.name
        return shared.name

    # -- nodes ------------------------------------------------------------------
    def _node(
        self, gm: fx.GraphModule, n: fx.Node, body: FunctionBody, top_level: bool
    ) -> None:
        expr = self._expression(gm, n, body.name_of, top_level)
        if n.users:
            body.emit(Statement("assign", expr, body.bind(n, n.name)))
        elif not (n.op == "call_function" and n.target is operator.getitem):
            # Dead value: run it for its effects, bind nothing.
            body.emit(Statement("expr", expr))

    def _expression(
        self,
        gm: fx.GraphModule,
        n: fx.Node,
        name_of: Callable[[fx.Node], str],
        top_level: bool,
    ) -> str:
        def render(value: Any) -> str:
            return render_value(value, name_of, self.consts)

        return node_expression(n, render, name_of, self.globals.target_expr, top_level)
