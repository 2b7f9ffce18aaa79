"""What Dynamo's graph says about each of its inputs: symbolic sizes, and whether it is written.

The backend records this for every call (cheap: one pass over the
placeholders); ``input_check.py`` turns it into the saved forward's input
signature.  Dynamo hands the backend the real objects it traced with, so a
forward argument is matched to its placeholder by identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx


@dataclasses.dataclass
class GraphInput:
    """One graph input: the object Dynamo traced with, its sizes (an int per
    static dim, the shape environment's symbol per dynamic one, after its
    replacements, so equal dims share one symbol) and whether the graph writes
    into it."""

    example: Any
    sizes: tuple[int | str, ...] | None
    mutated: bool


def graph_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[GraphInput]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    written = _written_storages(gm)
    out = []
    for node, example in zip(placeholders, example_inputs):
        fake = node.meta.get("example_value")
        sizes = None
        mutated = False
        if isinstance(fake, torch.Tensor):
            sizes = tuple(_size(s) for s in fake.shape)
            # NOTE: [an input the graph writes into]
            # An in-place op on the input or on a view of it bumps the fake
            # tensor's version counter while Dynamo traces; a custom op that
            # writes through its schema (Tensor(a!)) does not, so the storages
            # such ops write are collected too (views share their base's storage).
            mutated = fake._version > 0 or _storage(fake) in written
        out.append(GraphInput(example, sizes, mutated))
    return out


def _size(s: Any) -> int | str:
    if isinstance(s, torch.SymInt):
        node = s.node
        expr = node.shape_env.replace(node.expr)
        if expr.is_Integer:
            return int(expr)
        return str(expr)
    return int(s)


def _storage(t: torch.Tensor) -> Any:
    try:
        return torch.multiprocessing.reductions.StorageWeakRef(t.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return None


def _written_storages(gm: fx.GraphModule) -> set[Any]:
    written = set()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        for arg in _written_args(node):
            value = arg.meta.get("example_value") if isinstance(arg, fx.Node) else None
            if isinstance(value, torch.Tensor):
                written.add(_storage(value))
    written.discard(None)
    return written


def _written_args(node: fx.Node) -> list[Any]:
    target = node.target
    if isinstance(target, torch._ops.OpOverloadPacket):
        schemas = [getattr(target, o)._schema for o in target.overloads()]
    elif isinstance(target, torch._ops.OpOverload):
        schemas = [target._schema]
    else:
        return []
    out = []
    for schema in schemas:
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            if i < len(node.args):
                out.append(node.args[i])
            elif arg.name in node.kwargs:
                out.append(node.kwargs[arg.name])
    return out
