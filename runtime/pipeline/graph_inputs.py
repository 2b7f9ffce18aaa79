"""What Dynamo's graph says about each of its inputs: symbolic sizes, and whether it is written.

The backend records this for every call (cheap: one pass over the
placeholders); ``saved/input_signature.py`` turns it into the saved forward's input
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
    # The rows of the embedding table it indexes (None: it indexes none).
    index_bound: int | None = None


def graph_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> list[GraphInput]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    written = _written_storages(gm)
    bounds = _index_bounds(gm)
    out = []
    for node, example in zip(placeholders, example_inputs, strict=False):
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
        out.append(GraphInput(example, sizes, mutated, bounds.get(node)))
    return out


# (target, position of the indices, position of the table) of the embedding calls
# a Dynamo graph holds.
_EMBEDDINGS = {
    torch.nn.functional.embedding: (0, 1),
    torch.embedding: (1, 0),
    torch.ops.aten.embedding.default: (1, 0),
}


def _index_bounds(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """Graph inputs used as the indices of an embedding -> the table's rows.

    NOTE: [token ids out of range]
    Inductor's CPU kernels check an indirect index with TORCH_CHECK inside an
    OpenMP region, where a throw ends the process; the input check tests these
    inputs against the table first (see docs/performance.md, token bounds).
    """
    bounds: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        where = _EMBEDDINGS.get(node.target) if node.op == "call_function" else None
        if where is None or len(node.args) <= max(where):
            continue
        ids, table = node.args[where[0]], node.args[where[1]]
        value = table.meta.get("example_value") if isinstance(table, fx.Node) else None
        if (
            isinstance(ids, fx.Node)
            and ids.op == "placeholder"
            and isinstance(value, torch.Tensor)
            and isinstance(value.shape[0], int)
        ):
            rows = int(value.shape[0])
            bounds[ids] = min(rows, bounds.get(ids, rows))
    return bounds


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
