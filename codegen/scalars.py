"""Scalars placed beside their users before a split (``place_scalars_with_users``).

A float, bool or size computed in one piece cannot be handed to the next (see
NOTE: [a scalar is computed where it is used] in ``split.py``): each user gets
its own copy, right before it, and the split puts the copy in the user's piece.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .fingerprint import example_value
from .matching import OpMatcher


def _is_scalar_node(node: fx.Node, matcher: OpMatcher) -> bool:
    """A pure node whose value is a float or bool, plain or symbolic, or a SymInt
    computed from sizes alone (not from a tensor)."""
    if node.op not in ("call_function", "call_method") or node.is_impure():
        return False
    value = example_value(node)
    if isinstance(value, torch.SymInt):
        # NOTE: [size arithmetic is computed where it is used]
        # Dynamo computes ``s27 * s52`` once and hands the node to every later
        # layer that needs it: left where it is, the first layer's piece would
        # return it and every later piece take it, and the first layer would
        # never be a repeated piece of the others.  Recomputed beside each user, every
        # layer's piece is the same code.
        if _reads_tensors(node):
            return False
    elif not isinstance(value, (torch.SymFloat, torch.SymBool, float, bool)):
        return False
    return not matcher.matches(node)


def place_scalars_with_users(gm: fx.GraphModule, matcher: OpMatcher) -> set[fx.Node]:
    """Give every user of a scalar node its own copy of it, right before the user.

    See NOTE: [a scalar is computed where it is used] in split.py.  split_module orders pieces by where each
    first appears in the graph; sitting next to its user, a scalar never makes
    its piece appear before one it depends on.  A scalar read from a tensor
    (``.item()``) that something between it and its users may write reads a
    clone made where it was instead.  Returns the scalar nodes placed (copies
    included).
    """
    graph = gm.graph
    placed: set[fx.Node] = set()
    for node in reversed(list(graph.nodes)):
        if not node.users or not _is_scalar_node(node, matcher):
            continue
        order = {n: i for i, n in enumerate(graph.nodes)}
        users = sorted(node.users, key=order.__getitem__)
        if _reads_tensors(node) and _mutation_between(node, users[-1]):
            _read_clones(graph, node)
        for user in users[1:]:
            with graph.inserting_before(user):
                copy = graph.node_copy(node)
            copy.meta = dict(node.meta)
            user.replace_input_with(node, copy)
            placed.add(copy)
        if users[0].prev is not node:
            users[0].prepend(node)
        placed.add(node)
    if placed:
        graph.lint()
        gm.recompile()
    return placed


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [
        n for n in node.all_input_nodes if isinstance(example_value(n), torch.Tensor)
    ]


def _reads_tensors(node: fx.Node) -> bool:
    return bool(_tensor_inputs(node))


def _read_clones(graph: fx.Graph, node: fx.Node) -> None:
    """Make ``node`` read clones of its tensor inputs, taken where it is now."""
    for tensor in _tensor_inputs(node):
        with graph.inserting_before(node):
            clone = graph.call_function(torch.clone, (tensor,))
        clone.meta = dict(tensor.meta)
        node.replace_input_with(tensor, clone)


def _mutation_between(first: fx.Node, last: fx.Node) -> bool:
    node = first.next
    while node is not last and node.op != "output":
        if _may_mutate(node):
            return True
        node = node.next
    return False


def _may_mutate(node: fx.Node) -> bool:
    """Whether ``node`` may write a tensor (conservative: unknown calls may)."""
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_module":
        return True
    if node.op != "call_function":
        return False
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.is_mutable
    if isinstance(target, torch._ops.OpOverloadPacket):
        return any(getattr(target, o)._schema.is_mutable for o in target.overloads())
    name = getattr(target, "__name__", "") or ""
    return node.is_impure() or (name.endswith("_") and not name.endswith("__"))
