"""Lower a split GraphModule to the stitching source (``generate_execution_code``).

Flow: split GraphModule -> :class:`ModuleContext` (every decision made here) ->
Jinja templates -> black.  The result is a module defining ``execution_fn``.
"""

from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from .context import FunctionContext, ModuleContext, Statement
from .emit import render_module
from .errors import StitchCodegenError
from .fingerprint import graph_hash
from .naming import Namespace
from .split import IS_SPLITTING_META
from .values import ConstTable, qualified_target, render_value

SUBMODS_NAME = "__vllm_submods__"
DISPATCH_NAME = "__vllm_dispatch__"
INLINED_PREFIX = "__vllm_inlined_submods__"
FORMAT_VERSION = 1


def generate_execution_code(
    split_gm: fx.GraphModule, *, dispatch_on: str | None = None
) -> tuple[str, list[str], list[Any]]:
    """Emit the stitching source for ``split_gm``.

    Returns ``(code, submod_names, consts)``: ``submod_names[i]`` names the piece
    the code calls as ``__vllm_submods__[i]``; ``consts[j]`` is the object the code
    reads as ``__vllm_consts__[j]``.

    Pieces that are plain ``fx.GraphModule``s and not marked by ``split_graph`` as
    compiled (non-splitting) pieces are inlined as module-level functions; every
    other piece is called through ``__vllm_submods__``.

    With ``dispatch_on`` (the name of a placeholder holding the runtime size), the
    function takes ``__vllm_dispatch__`` instead of ``__vllm_submods__`` and picks
    the per-size table of runnables once, on its first line.
    """
    context, submod_names, consts = lower_execution(split_gm, dispatch_on=dispatch_on)
    return render_module(context), submod_names, consts


def lower_execution(
    split_gm: fx.GraphModule, *, dispatch_on: str | None = None
) -> tuple[ModuleContext, list[str], list[Any]]:
    """The template context, piece order and constants, without rendering.

    A warm start uses this to rebind saved source: same graph, same slots.
    """
    if not isinstance(split_gm, fx.GraphModule):
        raise StitchCodegenError(
            "generate_execution_code needs a torch.fx.GraphModule, got "
            f"{type(split_gm).__name__}"
        )
    lowering = _ModuleLowering(split_gm, dispatch_on)
    context = lowering.build()
    return context, lowering.submod_names, lowering.consts.values


def is_inlined_piece(module: Any) -> bool:
    """Whether a piece is inlined into the emitted source (see NOTE below)."""
    # NOTE: [which pieces are inlined]
    # The splitting pieces run eagerly, so their few ops are cheaper as plain
    # Python in the emitted module than as a GraphModule call.  A non-splitting
    # piece stays a call through __vllm_submods__ so the runtime can bind the
    # compiled (or CUDA-graph) runnable to it; split_graph marks which is which.
    return isinstance(module, fx.GraphModule) and module.meta.get(IS_SPLITTING_META, True)


class _ModuleLowering:
    def __init__(self, split_gm: fx.GraphModule, dispatch_on: str | None = None) -> None:
        self.split_gm = split_gm
        self.dispatch_on = dispatch_on
        if dispatch_on is not None and not any(
            n.op == "placeholder" and n.name == dispatch_on for n in split_gm.graph.nodes
        ):
            names = [n.name for n in split_gm.graph.nodes if n.op == "placeholder"]
            raise StitchCodegenError(
                f"dispatch_on={dispatch_on!r} is not a placeholder of the split graph "
                f"(placeholders: {names})"
            )
        self.consts = ConstTable()
        self.submod_names: list[str] = []
        self._submod_index: dict[str, int] = {}
        self._imports: set[str] = set()
        self._inlined: dict[str, str] = {}  # submodule target -> function name
        self._inlined_fns: list[FunctionContext] = []
        self._lowered: set[str] = set()
        self._used_imports: set[str] = set()

    # -- names of call targets ------------------------------------------------
    def _collect_imports(self, gm: fx.GraphModule, seen: set[int]) -> None:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is not operator.getitem:
                named = qualified_target(node.target)
                if named is not None and named[0] is not None:
                    # Reserved up front so no local shadows a module root.
                    self._imports.add(named[0])
            elif node.op == "call_module":
                child = _fetch_attr(gm, node.target, node)
                if is_inlined_piece(child) and id(child) not in seen:
                    seen.add(id(child))
                    self._collect_imports(child, seen)

    def target_expr(self, node: fx.Node) -> str:
        named = qualified_target(node.target)
        if named is None:
            return self.consts.ref(node.target)
        if named[0] is not None:
            self._used_imports.add(named[0])
        return named[1]

    # -- the module -------------------------------------------------------------
    def build(self) -> ModuleContext:
        self._collect_imports(self.split_gm, set())
        import_roots = {m.split(".")[0] for m in self._imports}
        self.global_names = Namespace(import_roots)
        # Inlined functions are module globals: name them before any local name
        # is handed out so no local can shadow one.
        for n in self.split_gm.graph.nodes:
            if n.op == "call_module":
                module = _fetch_attr(self.split_gm, n.target, n)
                if is_inlined_piece(module) and n.target not in self._inlined:
                    m = re.fullmatch(r"submod_(\d+)", n.target)
                    suffix = m.group(1) if m else str(len(self._inlined))
                    self._inlined[n.target] = self.global_names.create(
                        f"{INLINED_PREFIX}{suffix}"
                    )
        kwonly = DISPATCH_NAME if self.dispatch_on is not None else SUBMODS_NAME
        main = self._lower_function(
            self.split_gm,
            name="execution_fn",
            extra_params=(f"*, {kwonly}",),
            top_level=True,
            docstring="",
        )
        n_called = len(self.submod_names)
        n_inlined = len(self._inlined_fns)
        header = (
            f"Stitching source emitted by stitch.codegen (format {FORMAT_VERSION}).",
            f"pieces: {n_called + n_inlined} ({n_called} called through "
            f"{SUBMODS_NAME}, {n_inlined} inlined); "
            f"constants: {len(self.consts.values)}",
            f"graph: sha256:{graph_hash(self.split_gm)[:16]}",
        )
        imports = tuple(sorted(self._used_imports))
        return ModuleContext(
            header=header,
            imports=imports,
            functions=(*self._inlined_fns, main),
        )

    def _inline(self, target: str, module: fx.GraphModule, node: fx.Node) -> str:
        name = self._inlined[target]
        if name in self._lowered:
            return name
        self._lowered.add(name)
        fn = self._lower_function(
            module,
            name=name,
            extra_params=(),
            top_level=False,
            docstring=f"Inlined piece {target}"
            + (f" ({path})" if (path := module_path_of(module)) else "")
            + ".",
        )
        self._inlined_fns.append(fn)
        return name

    def _lower_function(
        self,
        gm: fx.GraphModule,
        *,
        name: str,
        extra_params: tuple[str, ...],
        top_level: bool,
        docstring: str,
    ) -> FunctionContext:
        nodes = list(gm.graph.nodes)
        position = {n: i for i, n in enumerate(nodes)}
        local = self.global_names.child()
        names: dict[fx.Node, str] = {}

        def name_of(n: fx.Node) -> str:
            try:
                return names[n]
            except KeyError:
                raise StitchCodegenError(
                    f"argument refers to node '{n.name}', which is not defined before "
                    f"its use in {'the split graph' if top_level else name}",
                    n,
                ) from None

        # NOTE: [del right after the last use]
        # A value is released as soon as its last user has run, as FX's own codegen
        # does, so activations are freed between pieces.  Values returned by the
        # function are kept.
        release_after: dict[int, list[fx.Node]] = {}
        for n in nodes:
            if n.op == "output" or not n.users:
                continue
            last = max(n.users, key=position.__getitem__)
            if last.op != "output":
                release_after.setdefault(position[last], []).append(n)

        params: list[str] = []
        body: list[Statement] = []
        for i, n in enumerate(nodes):
            if n.op == "placeholder":
                names[n] = local.create(n.name)
                params.append(names[n])
                if not n.users:
                    body.append(Statement("del", names[n]))
            elif n.op == "get_attr":
                value = _fetch_attr(gm, n.target, n)
                names[n] = self.consts.ref(value)
            elif n.op == "output":
                body.append(
                    Statement("return", render_value(n.args[0], name_of, self.consts))
                )
            else:
                expr, comment = self._expression(gm, n, name_of, top_level)
                if n.users:
                    names[n] = local.create(self._readable_name(gm, n) if top_level else n.name)
                    body.append(Statement("assign", expr, names[n], comment))
                elif not (n.op == "call_function" and n.target is operator.getitem):
                    # Dead value: run it for its effects, bind nothing.
                    body.append(Statement("expr", expr, "", comment))
            for dead in release_after.get(i, ()):
                if dead.op != "get_attr":
                    body.append(Statement("del", names[dead]))
        if top_level and self.dispatch_on is not None:
            # NOTE: [dispatch hoisted into the emitted function]
            # One table lookup per forward picks the runnables for this runtime
            # size (CUDA graph replays or compiled code); piece calls below then
            # go straight to them, with no per-piece size dispatch.
            size_param = next(
                names[n] for n in nodes if n.op == "placeholder" and n.name == self.dispatch_on
            )
            body.insert(
                0,
                Statement(
                    "assign",
                    f"{DISPATCH_NAME}[{size_param}]",
                    SUBMODS_NAME,
                    "the runnables for this runtime size, chosen once per forward",
                ),
            )
        signature = ", ".join([*params, *extra_params])
        return FunctionContext(name, signature, docstring, tuple(_merge_dels(body)))

    def _readable_name(self, gm: fx.GraphModule, n: fx.Node) -> str:
        """A piece output is named after the value inside the piece (``q``, ``out``)
        rather than FX's ``getitem_7``."""
        if not (n.op == "call_function" and n.target is operator.getitem):
            return n.name
        source, index = n.args
        if not (isinstance(source, fx.Node) and source.op == "call_module"):
            return n.name
        module = gm._modules.get(source.target)
        if not isinstance(module, fx.GraphModule) or type(index) is not int:
            return n.name
        output = next((o for o in reversed(module.graph.nodes) if o.op == "output"), None)
        values = output.args[0] if output is not None else None
        if isinstance(values, (tuple, list)) and 0 <= index < len(values):
            if isinstance(values[index], fx.Node):
                return values[index].name
        return n.name

    def _expression(
        self,
        gm: fx.GraphModule,
        n: fx.Node,
        name_of: Callable[[fx.Node], str],
        top_level: bool,
    ) -> tuple[str, str]:
        def args_source() -> str:
            parts = [render_value(a, name_of, self.consts) for a in n.args]
            for key, value in n.kwargs.items():
                _check_keyword(key, n)
                parts.append(f"{key}={render_value(value, name_of, self.consts)}")
            return ", ".join(parts)

        if n.op == "call_module":
            if not top_level:
                raise StitchCodegenError(
                    "call_module inside an inlined piece cannot be lowered; the "
                    "splitting piece must consist of call_function/call_method nodes",
                    n,
                )
            module = _fetch_attr(gm, n.target, n)
            path = module_path_of(module) if isinstance(module, fx.GraphModule) else ""
            if is_inlined_piece(module):
                fn_name = self._inline(n.target, module, n)
                return f"{fn_name}({args_source()})", path
            if n.target not in self._submod_index:
                self._submod_index[n.target] = len(self.submod_names)
                self.submod_names.append(n.target)
            index = self._submod_index[n.target]
            return f"{SUBMODS_NAME}[{index}]({args_source()})", path
        if n.op == "call_function" and n.target is operator.getitem:
            if len(n.args) != 2 or n.kwargs:
                raise StitchCodegenError("getitem must take (value, index)", n)
            source, index = n.args
            if top_level and type(index) is not int:
                raise StitchCodegenError(
                    f"index {index!r} of a piece output is not an int", n
                )
            if not isinstance(source, fx.Node):
                raise StitchCodegenError(
                    f"getitem of a constant {type(source).__name__} is not supported", n
                )
            return f"{name_of(source)}[{render_value(index, name_of, self.consts)}]", ""
        if n.op == "call_function":
            return f"{self.target_expr(n)}({args_source()})", ""
        if n.op == "call_method":
            if not isinstance(n.target, str) or not n.target.isidentifier():
                raise StitchCodegenError(
                    f"method name {n.target!r} is not a Python identifier", n
                )
            if not n.args:
                raise StitchCodegenError("call_method has no self argument", n)
            self_src = render_value(n.args[0], name_of, self.consts)
            rest = [render_value(a, name_of, self.consts) for a in n.args[1:]]
            for key, value in n.kwargs.items():
                _check_keyword(key, n)
                rest.append(f"{key}={render_value(value, name_of, self.consts)}")
            return f"{self_src}.{n.target}({', '.join(rest)})", ""
        raise StitchCodegenError(
            f"node kind {n.op!r} is not supported in "
            f"{'the split graph' if top_level else 'an inlined piece'}",
            n,
        )


def _check_keyword(key: str, n: fx.Node) -> None:
    # 'class' or 'lambda' pass isidentifier() but cannot name a keyword argument.
    if not key.isidentifier() or keyword.iskeyword(key):
        raise StitchCodegenError(
            f"keyword argument {key!r} cannot be written as a Python keyword argument",
            n,
        )


def _merge_dels(body: list[Statement]) -> list[Statement]:
    merged: list[Statement] = []
    for s in body:
        if s.kind == "del" and merged and merged[-1].kind == "del":
            merged[-1] = Statement("del", f"{merged[-1].value}, {s.value}")
        else:
            merged.append(s)
    return merged


def _fetch_attr(gm: torch.nn.Module, target: Any, node: fx.Node) -> Any:
    if not isinstance(target, str):
        raise StitchCodegenError(f"target {target!r} is not an attribute path", node)
    obj: Any = gm
    for part in target.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise StitchCodegenError(
                f"attribute {target!r} does not exist on the graph module", node
            ) from None
    return obj


_PATH_ROOT = re.compile(r"^L\['[^']*'\]\.?|^self\.?")


def normalize_module_path(path: str) -> str:
    """``L['self'].layers[3].self_attn`` -> ``layers.3.self_attn``."""
    path = _PATH_ROOT.sub("", path)
    path = re.sub(r"\._modules\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return path.strip(".")


def module_path_of(gm: fx.GraphModule) -> str:
    """The original module path a piece covers, from ``nn_module_stack`` metadata."""
    paths: list[str] = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_method", "call_module"):
            continue
        stack = n.meta.get("nn_module_stack")
        if not stack:
            continue
        last = list(stack.values())[-1]
        raw = last[0] if isinstance(last, tuple) else str(last)
        path = normalize_module_path(str(raw))
        if path and path not in paths:
            paths.append(path)
    if not paths:
        return ""
    if len(paths) == 1:
        return paths[0]
    split = [p.split(".") for p in paths]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    prefix = ".".join(common)
    if prefix in paths:
        return prefix
    return f"{paths[0]} .. {paths[-1]}"
