"""Lower a split GraphModule to the stitching source (``generate_execution_code``).

Flow: split GraphModule -> :class:`ModuleContext` (every decision made here) ->
Jinja templates, each statement laid out as black lays it out.  The result is a
module defining ``execution_fn``.

This module walks the graph: the module and its main function.  The piece calls
and the functions of inlined pieces are piece_calls.py's job, the module's
global names module_globals.py's, the binding of a piece call's outputs
piece_outputs.py's.
"""

from __future__ import annotations

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
from .context import FunctionContext, ModuleContext, Statement
from .fingerprint import graph_hash
from .piece_calls import PieceLowering
from .readable import provenance, readable_names


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


class _ModuleLowering(PieceLowering):
    def __init__(
        self,
        split_gm: fx.GraphModule,
        dispatch_on: str | None = None,
        profile: bool = False,
    ) -> None:
        if dispatch_on is not None and not any(
            n.op == "placeholder" and n.name == dispatch_on
            for n in split_gm.graph.nodes
        ):
            names = [n.name for n in split_gm.graph.nodes if n.op == "placeholder"]
            raise StitchCodegenError(
                f"dispatch_on={dispatch_on!r} is not a placeholder of the split graph "
                f"(placeholders: {names})"
            )
        super().__init__(split_gm, profile)
        self.dispatch_on = dispatch_on
        self.renamed: list[str] = []  # the header's table of renamed parameters

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
