"""Questions about the pieces of a split graph: which run inline, what they return,
which module they cover, whether they write their inputs."""

from __future__ import annotations

import operator
import re
from typing import Any

import torch
import torch.fx as fx

from stitch.core.errors import StitchCodegenError

from .split import IS_SPLITTING_META


def is_inlined_piece(module: Any) -> bool:
    """Whether a piece runs inline in the emitted source (see NOTE below)."""
    # NOTE: [which pieces are inlined]
    # The splitting pieces run eagerly, so their few ops are cheaper as plain
    # Python in the emitted module than as a GraphModule call.  A non-splitting
    # piece stays a call through __vllm_submods__ so the runtime can bind the
    # compiled (or CUDA-graph) runnable to it; split_graph marks which is which.
    return isinstance(module, fx.GraphModule) and module.meta.get(
        IS_SPLITTING_META, True
    )


def single_call(module: fx.GraphModule) -> fx.Node | None:
    """The op call of a piece that is one op call and returns its result or nothing.

    Such a piece is written at its call site instead of as a function.
    """
    calls = [
        n
        for n in module.graph.nodes
        if n.op not in ("placeholder", "get_attr", "output")
    ]
    if len(calls) != 1:
        return None
    (op,) = calls
    if op.op not in ("call_function", "call_method") or op.target is operator.getitem:
        return None
    output = next(n for n in reversed(module.graph.nodes) if n.op == "output")
    value = output.args[0] if output.args else None
    if value is op or value is None or (type(value) in (tuple, list) and not value):
        return op
    return None


def fetch_attr(gm: torch.nn.Module, target: Any, node: fx.Node) -> Any:
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


# NOTE: [the compiled module under a wrapper]
# Dynamo's sources start at the compiled frame's locals: ``L['self']`` for a
# module's own forward.  A forward behind a decorator of the ``(*args,
# **kwargs)`` kind (transformers 5.24's ``deprecate_kwarg`` wraps every
# model's) makes the module ``L['args'][0]``; its attributes are the model's
# names all the same, so that root is dropped as ``L['self']`` is.
_PATH_ROOT = re.compile(r"^L\['args'\]\[0\](?=\.)|^L\['[^']*'\]\.?|^self\.?")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]|[\"\\]")


def normalize_module_path(path: str) -> str:
    """``L['self'].layers[3].self_attn`` -> ``layers.3.self_attn``."""
    path = _PATH_ROOT.sub("", path)
    path = re.sub(r"\._modules\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    # The path is written into comments and docstrings: one printable line.
    return _UNPRINTABLE.sub("?", path.strip("."))


def reading_module(node: fx.Node) -> str:
    """The path of the innermost module whose forward ``node`` ran in ("" for
    the compiled module itself, or where no ``nn_module_stack`` was kept)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return normalize_module_path(str(last[0] if isinstance(last, tuple) else last))


def module_path_of(gm: fx.GraphModule) -> str:
    """The original module path a piece covers, from ``nn_module_stack`` metadata."""
    paths: list[str] = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_method", "call_module"):
            continue
        path = reading_module(n)
        if path and path not in paths:
            paths.append(path)
    if not paths:
        return ""
    # First to last, however they nest: "model .. model.layers.0.self_attn.v_proj"
    # says where the piece starts and ends, where "model" alone would not.
    return paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]}"


def output_value(module: fx.GraphModule) -> Any:
    """What a piece's graph returns (None if it returns nothing)."""
    output = next((o for o in reversed(module.graph.nodes) if o.op == "output"), None)
    return output.args[0] if output is not None and output.args else None


# operator's in-place functions: ``x += y`` on a tensor writes ``x``.
INPLACE_OPERATORS = frozenset(
    {
        operator.iadd,
        operator.isub,
        operator.imul,
        operator.imatmul,
        operator.itruediv,
        operator.ifloordiv,
        operator.imod,
        operator.ipow,
        operator.iand,
        operator.ior,
        operator.ixor,
        operator.ilshift,
        operator.irshift,
    }
)


def mutates(graph: fx.GraphModule) -> bool:
    """Whether a piece may write one of its inputs (an in-place op anywhere:
    a mutable schema, a trailing-underscore method, ``setitem``, an in-place
    operator or an ``out=``)."""
    return any(written_args(node) for node in graph.graph.nodes)


def written_args(node: fx.Node) -> list[Any]:
    """What ``node`` may write: its arguments written in place (a written
    argument a schema allows but the call leaves out is None)."""
    target = node.target
    out = node.kwargs.get("out")
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    outs = [o for o in outs if o is not None]
    if node.op == "call_method":
        return [node.args[0], *outs] if str(target).endswith("_") else outs
    if node.op != "call_function":
        return []
    if target is operator.setitem or target in INPLACE_OPERATORS:
        return [node.args[0], *outs]
    if isinstance(target, torch._ops.OpOverloadPacket):
        target = getattr(target, "default", target)
    schema = getattr(target, "_schema", None)
    if schema is not None and schema.is_mutable:
        return [
            node.kwargs.get(a.name) if i >= len(node.args) else node.args[i]
            for i, a in enumerate(schema.arguments)
            if a.alias_info is not None and a.alias_info.is_write
        ] or [None]
    if getattr(target, "__name__", "").endswith("_"):
        return [node.args[0] if node.args else None, *outs]
    return outs
