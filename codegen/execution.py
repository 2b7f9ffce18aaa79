"""Lower a split GraphModule to the stitching source (``generate_execution_code``).

Flow: split GraphModule -> :class:`ModuleContext` (every decision made here) ->
Jinja templates, each statement laid out as black lays it out.  The result is a
module defining ``execution_fn``.

This module walks the graph: the module, its main function, the piece calls and
the functions of inlined pieces.  The module's global names are
module_globals.py's job, the binding of a piece call's outputs piece_outputs.py's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from stitch.core.contract import (
    CONSTS_NAME,
    DISPATCH_NAME,
    FORMAT_VERSION,
    FUNCTION_NAME,
    RANGES_NAME,
    SUBMODS_NAME,
)
from stitch.core.errors import StitchCodegenError

from .body import FunctionBody
from .context import FunctionContext, ModuleContext, PieceFunction, Statement
from .expressions import kwargs_source, node_expression
from .fingerprint import graph_hash, structural_hash
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
from .readable import provenance, readable_names
from .values import ConstTable, render_string, render_value


def generate_execution_code(
    split_gm: fx.GraphModule,
    *,
    dispatch_on: str | None = None,
    profile: bool = False,
) -> tuple[str, list[str], list[Any]]:
    """Emit the stitching source for ``split_gm``.

    Returns ``(code, submod_names, consts)``: ``submod_names[i]`` names the piece
    the code takes from item ``i`` of ``__vllm_submods__``; ``consts[j]`` is the object the code
    reads as ``__vllm_consts__[j]``.

    Pieces that are plain ``fx.GraphModule``s and not marked by ``split_graph`` as
    compiled (non-splitting) pieces run inline: a piece that is one op call is
    written at its call site, any other becomes a module-level function (one
    per structure).  Every other piece is called through ``__vllm_submods__``.

    With ``dispatch_on`` (the name of a placeholder holding the runtime size), the
    function takes ``__vllm_dispatch__`` instead of ``__vllm_submods__`` and picks
    the per-size table of runnables once, on its first line.

    With ``profile``, the profiling variant is emitted (see NOTE: [the profiling
    variant]): the same statements, with every piece call between
    ``__stitch_ranges__.begin(...)`` and ``__stitch_ranges__.end()``.
    """
    # See NOTE: [black is imported only to generate code] (values.py): the
    # templates and the layout (jinja2, black) load with the first render.
    from .emit import render_module

    context, submod_names, consts = lower_execution(
        split_gm, dispatch_on=dispatch_on, profile=profile
    )
    return render_module(context), submod_names, consts


def lower_execution(
    split_gm: fx.GraphModule,
    *,
    dispatch_on: str | None = None,
    profile: bool = False,
) -> tuple[ModuleContext, list[str], list[Any]]:
    """The template context, piece order and constants, without rendering.

    A warm start uses this to rebind saved source: same graph, same slots.
    """
    if not isinstance(split_gm, fx.GraphModule):
        raise StitchCodegenError(
            "generate_execution_code needs a torch.fx.GraphModule, got "
            f"{type(split_gm).__name__}"
        )
    lowering = _ModuleLowering(split_gm, dispatch_on, profile)
    context = lowering.build()
    return context, lowering.submod_names, lowering.consts.values


class _ModuleLowering:
    def __init__(
        self,
        split_gm: fx.GraphModule,
        dispatch_on: str | None = None,
        profile: bool = False,
    ) -> None:
        self.split_gm = split_gm
        self.dispatch_on = dispatch_on
        self.profile = profile
        if dispatch_on is not None and not any(
            n.op == "placeholder" and n.name == dispatch_on
            for n in split_gm.graph.nodes
        ):
            names = [n.name for n in split_gm.graph.nodes if n.op == "placeholder"]
            raise StitchCodegenError(
                f"dispatch_on={dispatch_on!r} is not a placeholder of the split graph "
                f"(placeholders: {names})"
            )
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
        self.renamed: list[str] = []  # the header's table of renamed parameters
        self._readable: dict[str, str] = {}  # placeholder -> its readable name

    def _piece(self, node: fx.Node) -> Any:
        """The module a top-level ``call_module`` node calls, fetched once."""
        if node.target not in self._pieces:
            self._pieces[node.target] = fetch_attr(self.split_gm, node.target, node)
        return self._pieces[node.target]

    # -- the module -------------------------------------------------------------
    def build(self) -> ModuleContext:
        self.globals.reserve(self.split_gm, self._piece)
        main = self._lower_main()
        n_called = len(self.submod_names)
        header = (
            f"Stitching source emitted by stitch.codegen (format {FORMAT_VERSION}).",
            f"pieces: {n_called + self._n_inlined} ({n_called} called through "
            f"{DISPATCH_NAME if self.dispatch_on else SUBMODS_NAME}, "
            f"{self._n_inlined} inlined); "
            f"constants: {len(self.consts.values)}",
            f"graph: sha256:{graph_hash(self.split_gm)[:16]}",
        )
        if self.consts.values:
            header += (
                f"{CONSTS_NAME}, set by the loader (slot: graph attribute, in "
                "the module reading it: value):",
                *(f"  {line}" for line in self.consts.describe()),
            )
        if self.renamed:
            header += (
                "parameters (name: module path (Dynamo's name), or size: the "
                "input dimension it is):",
                *self.renamed,
            )
        if self.consts.uses_torch:
            self.globals.used_imports.add("torch")
        if self.profile:
            header += (
                f"profiling variant: every piece call is timed by {RANGES_NAME}",
            )
        return ModuleContext(
            header=header,
            imports=tuple(sorted(self.globals.used_imports)),
            aliases=tuple(
                Statement("assign", a.value, a.name) for a in self.globals.used_aliases
            ),
            functions=(*(f.context() for f in self._functions), main),
        )

    def _lower_main(self) -> FunctionContext:
        gm = self.split_gm
        body = FunctionBody(self.globals.names.child(), self.consts, "the split graph")
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        readable = self._readable = readable_names(placeholders)
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                body.param(n, readable.get(n.name))
            elif n.op == "get_attr":
                body.names[n] = self._attribute(gm, n)
            elif n.op == "output":
                value = body.render(n.args[0])
                if self.profile:
                    body.emit(Statement("expr", f"{RANGES_NAME}.end_forward()"))
                body.emit(Statement("return", value))
            elif n.op == "call_module":
                self._piece_call(body, n)
            elif n in body.unpacked:
                continue  # bound where its piece was called
            else:
                self._node(gm, n, body, top_level=True)
        kwonly, table = SUBMODS_NAME, SUBMODS_NAME
        comment = "the compiled pieces, bound to locals once per forward"
        if self.dispatch_on is not None:
            # NOTE: [dispatch hoisted into the emitted function]
            # One table lookup per forward picks the runnables for this runtime
            # size (CUDA graph replays or compiled code); piece calls below then
            # go straight to them, with no per-piece size dispatch.
            size = next(
                body.names[n]
                for n in gm.graph.nodes
                if n.op == "placeholder" and n.name == self.dispatch_on
            )
            kwonly, table = DISPATCH_NAME, f"{DISPATCH_NAME}[{size}]"
            comment = "the runnables for this runtime size, chosen once per forward"
        statements = body.body()
        if self._submod_locals:
            # NOTE: [pieces are locals]
            # One unpacking binds every compiled piece to a local named after it;
            # a call then loads a local instead of indexing the list per piece.
            targets = ", ".join(self._submod_locals)
            if len(self._submod_locals) == 1:
                targets = f"({targets},)"
            statements = (Statement("assign", table, targets, comment), *statements)
        if self.profile:
            statements = (
                Statement("expr", f"{RANGES_NAME}.begin_forward()"),
                *statements,
            )
            kwonly = f"{kwonly}, {RANGES_NAME}"
        self.renamed = provenance(
            placeholders, {p.name: body.names[p] for p in placeholders}
        )
        signature = ", ".join([*body.params, f"*, {kwonly}"])
        return FunctionContext(FUNCTION_NAME, signature, "", statements)

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
