"""Stable content hashes of FX graphs (no object ids, paths or timestamps)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx

from .values import qualified_target

_PRIMITIVES = frozenset({bool, int, float, str, bytes, type(None)})


def describe_constant(value: Any, strings: dict[str, int] | None = None) -> str:
    """A stable description of a non-literal constant (used only for hashing).

    ``strings``: string constants described by their number (``<str#0>``), see
    :func:`structural_hash`.
    """
    kind = type(value)
    if strings and isinstance(value, str) and value in strings:
        return f"<str#{strings[value]}>"
    if kind in _PRIMITIVES:
        return repr(value)
    if isinstance(value, fx.Node):
        return f"%{value.name}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join([describe_constant(v, strings) for v in value])
        return f"{kind.__name__}[{inner}]"
    if isinstance(value, dict):
        inner = ", ".join(
            [
                f"{describe_constant(k, strings)}: {describe_constant(v, strings)}"
                for k, v in value.items()
            ]
        )
        return "{" + inner + "}"
    if isinstance(value, torch.Tensor):
        return (
            f"Tensor(dtype={value.dtype}, shape={tuple(value.shape)}, "
            f"stride={tuple(value.stride())}, device={value.device.type})"
        )
    if isinstance(
        value, (torch.dtype, torch.device, torch.memory_format, torch.layout)
    ):
        return str(value)
    if isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, slice):
        # Bounds may be nodes (``x[:, 0:s27]``): described, never repr'd.
        parts = (value.start, value.stop, value.step)
        return f"slice({', '.join(describe_constant(v) for v in parts)})"
    if kind is _Ref:
        return value.name
    return f"<{kind.__module__}.{kind.__qualname__}>"


def describe_target(target: Any) -> str:
    if isinstance(target, str):
        return target
    named = qualified_target(target)
    if named is not None:
        return named[1]
    return f"<{type(target).__module__}.{type(target).__qualname__}>"


def graph_lines(gm: fx.GraphModule, prefix: str = "") -> list[str]:
    """Canonical text lines of ``gm`` and every GraphModule child it calls."""
    lines: list[str] = []
    _graph_lines(gm, prefix, lines, {})
    return lines


def _graph_lines(
    gm: fx.GraphModule, prefix: str, lines: list[str], targets: dict[int, str]
) -> None:
    for node in gm.graph.nodes:
        args = describe_constant(tuple(node.args)) if node.args else "tuple[]"
        kwargs = describe_constant(dict(node.kwargs)) if node.kwargs else "{}"
        target = node.target
        if type(target) is str:
            described = target
        else:
            described = targets.get(id(target))
            if described is None:
                described = targets[id(target)] = describe_target(target)
        lines.append(f"{prefix}{node.op} {node.name} {described} {args} {kwargs}")
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(gm)
            if not isinstance(value, torch.nn.Module):
                lines.append(f"{prefix}  = {describe_constant(value)}")
        if node.op == "call_module":
            child = operator.attrgetter(node.target)(gm)
            if isinstance(child, fx.GraphModule):
                _graph_lines(child, prefix + "  ", lines, targets)
            else:
                lines.append(f"{prefix}  <{type(child).__qualname__}>")


def graph_hash(gm: fx.GraphModule) -> str:
    """sha256 hex digest of :func:`graph_lines`."""
    text = "\n".join(graph_lines(gm))
    return hashlib.sha256(text.encode()).hexdigest()


def example_value(node: fx.Node) -> Any:
    """The value a node was traced with: Dynamo's ``example_value``, else the
    ``val`` of make_fx/AOT graphs (None where it has neither)."""
    return node.meta.get("example_value", node.meta.get("val"))


def describe_example(value: Any) -> str:
    """Dtype/shape/stride/device of an example input; symbolic dims by expression."""
    if isinstance(value, torch.Tensor):
        return (
            f"T({value.dtype}, {tuple(str(s) for s in value.shape)}, "
            f"{tuple(str(s) for s in value.stride())}, {value.device.type}, "
            f"rg={value.requires_grad})"
        )
    if isinstance(value, torch.SymInt):
        return f"SymInt({value.node.expr})"
    return describe_constant(value)


def structural_hash(
    gm: fx.GraphModule, example_inputs: Any = (), *, abstract_strings: bool = False
) -> str:
    """Hash of a graph's structure, blind to node names and metadata.

    Two layers' pieces that differ only in names (``layers_0_...`` vs
    ``layers_1_...``) hash alike, so they can share one compiled artifact.
    Tensor attributes (``get_attr``) make a piece unique: their values would be
    baked into compiled code.  With ``abstract_strings``, string constants hash
    by position in :func:`string_constants` only (``<str#0>``), so pieces that
    differ only in, say, a layer name passed to an op hash alike; the caller
    decides whether the compiled code really is independent of them.
    """
    text = _structure_text(gm, abstract_strings)
    for v in example_inputs:
        text += "\n" + describe_example(v)
    return hashlib.sha256(text.encode()).hexdigest()


# NOTE: [a graph's structure is described once per compile]
# A cold compile hashes each piece's structure three times: its identity in
# the cache, the repeated-piece check of the fake run and its compile keys
# (with its example inputs).  On the 32-layer example those were 131
# descriptions of 65 graphs, about a tenth of the backend call.  Within
# :func:`structures_described_once` each graph's description is made once;
# the caller promises that no graph changes inside it.
_DESCRIBED: contextvars.ContextVar[dict[int, tuple[Any, dict[Any, Any]]] | None] = (
    contextvars.ContextVar("stitch_structures_described", default=None)
)


@contextlib.contextmanager
def structures_described_once() -> Iterator[None]:
    """Describe each graph's structure once inside (graphs left unchanged)."""
    token = _DESCRIBED.set({})
    try:
        yield
    finally:
        _DESCRIBED.reset(token)


def _structure_text(gm: fx.GraphModule, abstract_strings: bool) -> str:
    strings = string_constants(gm) if abstract_strings else []
    described = _DESCRIBED.get()
    if described is None:
        return _describe_structure(gm, strings)
    # The graph is kept beside its texts, so its id is not reused meanwhile; a
    # graph without strings has one text, with them abstracted or not.
    texts = described.setdefault(id(gm), (gm, {}))[1]
    key = bool(strings)
    if key not in texts:
        texts[key] = _describe_structure(gm, strings)
    return texts[key]


def _describe_structure(gm: fx.GraphModule, strings: list[str]) -> str:
    """The graph's lines, its string constants (``strings``) by position."""
    index: dict[fx.Node, str] = {}
    numbered = {v: k for k, v in enumerate(strings)}
    lines: list[str] = []
    for i, node in enumerate(gm.graph.nodes):
        index[node] = f"%{i}"
        args = fx.map_arg((node.args, dict(node.kwargs)), lambda n: _Ref(index[n]))
        target = describe_target(node.target) if node.op != "placeholder" else ""
        lines.append(f"{node.op} {target} {describe_constant(args, numbered)}")
        if node.op == "get_attr":
            lines.append(f"attribute {node.target}")
    return "\n".join(lines)


def string_constants(gm: fx.GraphModule) -> list[str]:
    """Distinct string constants in node arguments, in graph order."""
    described = _DESCRIBED.get()
    if described is None:
        return _find_strings(gm)
    kept = described.setdefault(id(gm), (gm, {}))[1]
    if "strings" not in kept:
        kept["strings"] = _find_strings(gm)
    return list(kept["strings"])


def _find_strings(gm: fx.GraphModule) -> list[str]:
    found: dict[str, None] = {}

    def visit(value: Any) -> None:
        if isinstance(value, str):
            found.setdefault(value, None)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(k)
                visit(v)

    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method"):
            visit(node.args)
            visit(dict(node.kwargs))
    return list(found)


class _Ref:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name
