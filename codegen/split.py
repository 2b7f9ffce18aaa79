"""Cut an FX graph at splitting ops into pieces (``split_graph``)."""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.fx.passes.split_module import split_module

from stitch.core.errors import StitchCodegenError

from .fingerprint import example_value
from .matching import OpMatcher, SplittingOp

# Key under which split_graph records on each piece whether it is a splitting piece.
IS_SPLITTING_META = "stitch_is_splitting_graph"


@dataclasses.dataclass
class SplitItem:
    submod_name: str
    graph_id: int
    is_splitting_graph: bool
    graph: fx.GraphModule


def split_graph(
    gm: fx.GraphModule, splitting_ops: Sequence[SplittingOp] | OpMatcher | None
) -> tuple[fx.GraphModule, list[SplitItem]]:
    """Split ``gm`` at ``splitting_ops``.

    Returns the split GraphModule (one ``call_module`` per piece, in original node
    order) and its pieces sorted by integer graph id.  ``gm`` itself is changed only
    by the ``size()`` decomposition and by giving each user of a scalar node its
    own copy of it, next to the user; both keep its meaning.
    """
    if not isinstance(gm, fx.GraphModule):
        raise StitchCodegenError(
            f"split_graph needs a torch.fx.GraphModule, got {type(gm).__name__}"
        )
    matcher = (
        splitting_ops
        if isinstance(splitting_ops, OpMatcher)
        else OpMatcher.parse(splitting_ops)
    )
    _decompose_size_nodes(gm)
    scalars = _place_scalars_with_users(gm, matcher)

    assignment, splitting_ids = _assign_pieces(gm, matcher, scalars)
    split_gm = split_module(
        gm,
        None,
        lambda node: assignment[node],
        keep_original_order=True,
        keep_original_node_name=True,
    )
    _check_no_size_crosses(split_gm)

    items: list[SplitItem] = []
    for name, module in split_gm.named_children():
        m = re.fullmatch(r"submod_(\d+)", name)
        if m is None or not isinstance(module, fx.GraphModule):
            continue
        graph_id = int(m.group(1))
        is_splitting = graph_id in splitting_ids
        module.meta[IS_SPLITTING_META] = is_splitting
        items.append(SplitItem(name, graph_id, is_splitting, module))
    items.sort(key=lambda item: item.graph_id)
    return split_gm, items


_ALLOCATION_TARGETS: tuple[Any, ...] = (
    torch.empty,
    torch.empty_like,
    torch.empty_strided,
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.empty_strided.default,
    torch.ops.aten.new_empty.default,
    torch.ops.aten.empty.default if hasattr(torch.ops.aten.empty, "default") else None,
)


def _is_allocation(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("new_empty", "new_empty_strided")
    return node.op == "call_function" and any(
        node.target is t for t in _ALLOCATION_TARGETS if t is not None
    )


def _is_size_helper(node: fx.Node) -> bool:
    """Nodes that only read sizes (allowed beside an allocation it feeds)."""
    if node.op == "call_function":
        return node.target in (
            torch.ops.aten.sym_size.int,
            operator.getitem,
        ) or (node.target is getattr and node.args[1:2] == ("shape",))
    return node.op == "call_method" and node.target == "size"


def _assign_pieces(
    gm: fx.GraphModule, matcher: OpMatcher, placed: set[fx.Node]
) -> tuple[dict[fx.Node, int], set[int]]:
    # NOTE: [pieces are contiguous runs of nodes]
    # Walking in graph order and only ever opening a new piece keeps the original
    # node order inside and across pieces, which mutation semantics depend on.
    runs: list[tuple[bool, list[fx.Node]]] = []
    run_of: dict[fx.Node, int] = {}
    scalars: list[tuple[fx.Node, fx.Node | None]] = []  # (scalar, node before it)
    previous: fx.Node | None = None
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node in placed:
            scalars.append((node, previous))  # goes to its user's piece, below
            continue
        previous = node
        # NOTE: [why getitem stays with its producer]
        # Tuples never cross piece boundaries: a getitem of a piece-local tuple
        # belongs to the piece that made the tuple.  A getitem is pure, so moving
        # it next to its producer never changes what runs.
        producer = node.args[0] if node.args else None
        if (
            node.op == "call_function"
            and node.target is operator.getitem
            and isinstance(producer, fx.Node)
            and producer in run_of
        ):
            run_of[node] = run_of[producer]
            runs[run_of[node]][1].append(node)
            continue
        splitting = matcher.matches(node)
        if not runs or runs[-1][0] != splitting:
            runs.append((splitting, []))
        run_of[node] = len(runs) - 1
        runs[-1][1].append(node)

    # Merge runs that only allocate (e.g. the `out` buffer of an attention op that
    # sits between two splitting ops) into the next run, which consumes the
    # buffer; a trailing one joins the previous run.
    group_of_run: list[int] = []
    groups: list[bool] = []
    pending: list[int] = []
    for index, (splitting, nodes) in enumerate(runs):
        if not splitting and len(runs) > 1 and _only_allocates(nodes):
            pending.append(index)
            group_of_run.append(-1)
            continue
        if pending and groups and groups[-1] == splitting:
            # NOTE: [allocations between splitting ops]
            # Only allocations separate this run from the previous group of the
            # same kind (two splitting runs, since runs alternate): the buffers
            # and both runs form one piece, as consecutive splitting ops do.
            group = len(groups) - 1
        else:
            groups.append(splitting)
            group = len(groups) - 1
        group_of_run.append(group)
        for p in pending:
            group_of_run[p] = group
        pending = []
    for p in pending:
        if not groups:
            groups.append(False)
        group_of_run[p] = len(groups) - 1

    assignment = {node: group_of_run[run] for node, run in run_of.items()}
    # NOTE: [a scalar is computed where it is used]
    # Inductor returns tensors, SymInts and sympy expressions from a graph, not
    # floats or bools, plain or symbolic, so a SymFloat made in a compiled piece
    # (``float(scaling)``, ``x.item()``, ``s0 ** 0.5``) cannot be handed to the
    # next piece.  Each scalar node has one user, right after it
    # (_place_scalars_with_users), and goes to its user's piece: what crosses
    # instead are its inputs (SymInts, tensors).  Walking backwards places a
    # chain of scalars in one piece.
    for node, before in reversed(scalars):
        user = next(iter(node.users), None)
        if user in assignment:
            assignment[node] = assignment[user]
        elif before is not None:  # returned by the graph, or unused: where it is
            assignment[node] = assignment[before]
        else:
            if not groups:
                groups.append(False)
            assignment[node] = 0
    splitting_ids = {g for g, splitting in enumerate(groups) if splitting}
    return assignment, splitting_ids


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
        # never be a twin of the others.  Recomputed beside each user, every
        # layer's piece is the same code.
        if _reads_tensors(node):
            return False
    elif not isinstance(value, (torch.SymFloat, torch.SymBool, float, bool)):
        return False
    return not matcher.matches(node)


def _place_scalars_with_users(gm: fx.GraphModule, matcher: OpMatcher) -> set[fx.Node]:
    """Give every user of a scalar node its own copy of it, right before the user.

    See the NOTE in _assign_pieces.  split_module orders pieces by where each
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


def _only_allocates(nodes: list[fx.Node]) -> bool:
    return any(_is_allocation(n) for n in nodes) and all(
        _is_allocation(n) or _is_size_helper(n) for n in nodes
    )


def _ndim_of(node: fx.Node) -> int | None:
    for key in ("val", "example_value"):
        val = node.meta.get(key)
        if isinstance(val, torch.Tensor):
            return val.dim()
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        return len(tm.shape)
    return None


def _is_full_size(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target == "size":
        return len(node.args) == 1 and not node.kwargs
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) == 2
        and node.args[1] == "shape"
    )


def _decompose_size_nodes(gm: fx.GraphModule) -> None:
    """Rewrite ``x.size()`` / ``x.shape`` into per-dimension ``sym_size`` reads.

    A ``torch.Size`` must never cross a piece boundary (it is a tuple of SymInts
    the piece compiler cannot take as one input), so each use reads the sizes it
    needs right where it is used.
    """
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        if not _is_full_size(node):
            continue
        tensor = node.args[0]
        ndim = _ndim_of(tensor) if isinstance(tensor, fx.Node) else None
        for user in list(node.users):
            if (
                user.op == "call_function"
                and user.target is operator.getitem
                and user.args[0] is node
                and isinstance(user.args[1], int)
            ):
                with graph.inserting_before(user):
                    dim = user.args[1]
                    if dim < 0 and ndim is not None:
                        dim += ndim
                    new = graph.call_function(
                        torch.ops.aten.sym_size.int, (tensor, dim)
                    )
                new.meta = dict(user.meta)
                user.replace_all_uses_with(new)
                graph.erase_node(user)
                changed = True
            elif ndim is not None:
                with graph.inserting_before(user):
                    dims: Any = [
                        graph.call_function(torch.ops.aten.sym_size.int, (tensor, d))
                        for d in range(ndim)
                    ]
                    # NOTE: [a rebuilt size is a torch.Size]
                    # An op takes the list of ints as it is; anything else (a
                    # method such as numel(), Python code, the graph's output)
                    # gets a torch.Size again, built right before its user.
                    if not isinstance(
                        user.target,
                        (torch._ops.OpOverload, torch._ops.OpOverloadPacket),
                    ):
                        dims = graph.call_function(torch.Size, (dims,))
                user.replace_input_with(node, dims)
                changed = True
        if not node.users:
            graph.erase_node(node)
            changed = True
    if changed:
        graph.lint()
        gm.recompile()


def _check_no_size_crosses(split_gm: fx.GraphModule) -> None:
    for node in split_gm.graph.nodes:
        if node.op != "call_module":
            continue
        sub = getattr(split_gm, node.target)
        out = next(n for n in sub.graph.nodes if n.op == "output")
        values = (
            out.args[0] if isinstance(out.args[0], (tuple, list)) else (out.args[0],)
        )
        for val in values:
            if isinstance(val, fx.Node) and _is_full_size(val):
                raise StitchCodegenError(
                    f"a torch.Size value would cross out of piece {node.target}; its "
                    "tensor has no shape metadata ('val', 'example_value' or "
                    "'tensor_meta'), so the size could not be split per dimension. "
                    "Trace with make_fx/Dynamo or run ShapeProp first",
                    val,
                )
