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

from .matching import OpMatcher, SplittingOp
from .scalars import place_scalars_with_users

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
    scalars = place_scalars_with_users(gm, matcher)

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
    """Each node's piece, and the splitting pieces: runs of nodes of one kind,
    runs that only allocate merged into their neighbours, scalars where used."""
    runs, run_of, scalars = _runs(gm, matcher, placed)
    group_of_run, groups = _group_runs(runs)
    assignment = {node: group_of_run[run] for node, run in run_of.items()}
    _assign_scalars(scalars, assignment, groups)
    splitting_ids = {g for g, splitting in enumerate(groups) if splitting}
    return assignment, splitting_ids


def _runs(gm: fx.GraphModule, matcher: OpMatcher, placed: set[fx.Node]) -> tuple[
    list[tuple[bool, list[fx.Node]]],
    dict[fx.Node, int],
    list[tuple[fx.Node, fx.Node | None]],
]:
    """The graph's nodes in runs of splitting or non-splitting ops, each node's
    run, and the placed scalars with the node before each (assigned last)."""
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
    return runs, run_of, scalars


def _group_runs(
    runs: list[tuple[bool, list[fx.Node]]],
) -> tuple[list[int], list[bool]]:
    """Each run's piece, and per piece whether it splits."""
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
    return group_of_run, groups


def _assign_scalars(
    scalars: list[tuple[fx.Node, fx.Node | None]],
    assignment: dict[fx.Node, int],
    groups: list[bool],
) -> None:
    """Put each placed scalar in its user's piece (else where it is)."""
    # NOTE: [a scalar is computed where it is used]
    # Inductor returns tensors, SymInts and sympy expressions from a graph, not
    # floats or bools, plain or symbolic, so a SymFloat made in a compiled piece
    # (``float(scaling)``, ``x.item()``, ``s0 ** 0.5``) cannot be handed to the
    # next piece.  Each scalar node has one user, right after it
    # (place_scalars_with_users), and goes to its user's piece: what crosses
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
