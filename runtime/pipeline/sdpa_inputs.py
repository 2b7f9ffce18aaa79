"""What a splitting SDPA is given: inputs in the form that costs least across a cut.

Inductor lowers SDPA inside its graph and fuses what prepares its inputs; a
splitting SDPA runs eagerly between two pieces, so what it is handed crosses
a cut, and what it does with it runs eagerly every call.  Two rewrites of
Dynamo's graph, before the split, for SDPA calls on the CPU:

NOTE: [boolean SDPA masks are converted once, before the split]
Eager ``scaled_dot_product_attention`` turns a boolean ``attn_mask`` into an
additive one on every call (``where(mask.logical_not(), -inf, 0)`` in the
query's dtype: two scalar tensors, a ``logical_not``, a ``where`` and a buffer)
before it runs a kernel.  Inductor fuses that conversion into the kernel that
builds the mask; a splitting SDPA converts again in every layer, though every
layer gets the same mask (16 small ops a decode step on an 8-layer
transformers Llama).  So each splitting SDPA whose mask is a boolean CPU
tensor is given the additive mask instead, computed right after the boolean
one (once per mask and dtype), where Inductor compiles it into the piece that
builds the mask.  The values are SDPA's own (0 where attending, -inf where
not), and on the CPU SDPA picks its kernel from the mask's shape, never its
dtype, so outputs are unchanged.  A CUDA mask is left alone: there SDPA
converts with -65504, not -inf, when it picks cuDNN.

NOTE: [repeated key/value heads become enable_gqa]
A grouped-query model repeats each key/value head for its query heads before
SDPA (transformers' ``repeat_kv``: ``kv[:, :, None].expand(b, h, n, s,
d).reshape(b, h * n, s, d)``), a copy ``n`` times the KV cache's size per
layer.  Inside Inductor's graph that buffer is reused from layer to layer;
across a cut each piece allocates its own, and at batch 8 those are large
enough for the allocator to hand them back to the system every step.  SDPA
takes the heads unrepeated with ``enable_gqa=True`` (query head ``i`` reads
key/value head ``i // n``, which is what the repeat lays out), and the CPU
kernels read them in place.  So a splitting SDPA on the CPU whose key and
value are both that repeat of the same ``n`` is given the unrepeated tensors
and ``enable_gqa=True``; the repeat, now unused, is removed.  The kernel
computes each head as before (outputs bitwise equal in the tests); on CUDA,
where ``enable_gqa`` can move SDPA to another kernel, nothing changes.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from stitch.codegen.fingerprint import example_value
from stitch.codegen.matching import OpMatcher, node_key

from ..compat.shapes import known_equal

SDPA = "aten::scaled_dot_product_attention"
MASK_POSITION = 3  # (query, key, value, attn_mask, dropout_p, is_causal, ...)


def rewrite_splitting_sdpa(gm: fx.GraphModule, matcher: OpMatcher) -> None:
    """Both rewrites of the module docstring, on Dynamo's graph ``gm`` in place."""
    changed = additive_sdpa_masks(gm, matcher, recompile=False)
    changed += unrepeated_sdpa_heads(gm, matcher, recompile=False)
    if changed:
        gm.graph.lint()
        gm.recompile()


def additive_sdpa_masks(
    gm: fx.GraphModule, matcher: OpMatcher, *, recompile: bool = True
) -> int:
    """Give splitting SDPA calls with a boolean CPU mask an additive one; how many."""
    graph = gm.graph
    converted: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}
    count = 0
    for node in list(graph.nodes):
        if not _is_splitting_sdpa(node, matcher):
            continue
        mask = _mask_argument(node)
        query = _query_example(node)
        if (
            not isinstance(mask, fx.Node)
            or query is None
            or bool(node.kwargs.get("is_causal", False))
        ):
            continue
        example = example_value(mask)
        if (
            not isinstance(example, torch.Tensor)
            or example.dtype != torch.bool
            or example.device.type != "cpu"
        ):
            continue
        additive = converted.get((mask, query.dtype))
        if additive is None:
            additive = _insert_additive(graph, mask, example, query.dtype)
            converted[mask, query.dtype] = additive
        if "attn_mask" in node.kwargs:
            node.update_kwarg("attn_mask", additive)
        else:
            node.update_arg(MASK_POSITION, additive)
        count += 1
    if count and recompile:
        graph.lint()
        gm.recompile()
    return count


def _is_splitting_sdpa(node: fx.Node, matcher: OpMatcher) -> bool:
    key = node_key(node)
    return key is not None and key.op == SDPA and matcher.matches(node)


def _mask_argument(node: fx.Node) -> Any:
    if "attn_mask" in node.kwargs:
        return node.kwargs["attn_mask"]
    return node.args[MASK_POSITION] if len(node.args) > MASK_POSITION else None


def _query_example(node: fx.Node) -> torch.Tensor | None:
    """The example value of an SDPA call's query (None where it has none)."""
    query = node.args[0] if node.args else node.kwargs.get("query")
    example = example_value(query) if isinstance(query, fx.Node) else None
    return example if isinstance(example, torch.Tensor) else None


def _insert_additive(
    graph: fx.Graph, mask: fx.Node, example: torch.Tensor, dtype: torch.dtype
) -> fx.Node:
    anchor = mask
    if mask.op == "placeholder":
        # Placeholders stay first: after the last of them.
        anchor = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(anchor):
        masked_out = graph.call_function(torch.logical_not, (mask,))
    with graph.inserting_after(masked_out):
        zeros = graph.call_function(torch.zeros_like, (mask,), {"dtype": dtype})
    with graph.inserting_after(zeros):
        # Named after the boolean mask: the emitted source passes it to SDPA.
        additive = graph.create_node(
            "call_function",
            torch.masked_fill,
            (zeros, masked_out, float("-inf")),
            name=f"{mask.name}_additive",
        )
    mode = getattr(example, "fake_mode", None)
    if mode is not None:
        with mode:
            not_example = torch.logical_not(example)
            zeros_example = torch.zeros_like(example, dtype=dtype)
            value = torch.masked_fill(zeros_example, not_example, float("-inf"))
        for node, val in (
            (masked_out, not_example),
            (zeros, zeros_example),
            (additive, value),
        ):
            node.meta["example_value"] = val
            node.meta["stack_trace"] = mask.meta.get("stack_trace")
            if "nn_module_stack" in mask.meta:
                node.meta["nn_module_stack"] = mask.meta["nn_module_stack"]
    return additive


def unrepeated_sdpa_heads(
    gm: fx.GraphModule, matcher: OpMatcher, *, recompile: bool = True
) -> int:
    """Give splitting SDPA calls on the CPU whose key and value repeat their heads
    the heads unrepeated and ``enable_gqa=True``; how many."""
    count = 0
    for node in list(gm.graph.nodes):
        # enable_gqa is the eighth argument: set it only where it is not given.
        if not _is_splitting_sdpa(node, matcher) or not 3 <= len(node.args) <= 7:
            continue
        if node.kwargs.get("enable_gqa", False) is not False:
            continue
        query = _query_example(node)
        key, value = (_repeated_heads(a) for a in node.args[1:3])
        if (
            query is None
            or query.device.type != "cpu"
            or key is None
            or value is None
            or not known_equal(key[1], value[1])
            or any(len(node.args[i].users) != 1 for i in (1, 2))
        ):
            continue
        repeats = [node.args[1], node.args[2]]
        node.update_arg(1, key[0])
        node.update_arg(2, value[0])
        node.update_kwarg("enable_gqa", True)
        for repeat in repeats:
            _erase_unused(gm.graph, repeat)
        count += 1
    if count and recompile:
        gm.graph.lint()
        gm.recompile()
    return count


_UNSQUEEZE_2 = (slice(None), slice(None), None, slice(None), slice(None))


def _repeated_heads(node: Any) -> tuple[fx.Node, Any] | None:
    """``(kv, n)`` when ``node`` is ``kv[:, :, None].expand(b, h, n, s, d)
    .reshape(b, h * n, s, d)`` of a 4-d ``kv`` (shapes proven, not guarded)."""
    if not (
        isinstance(node, fx.Node)
        and node.op == "call_method"
        and node.target in ("reshape", "view")
    ):
        return None
    expand = node.args[0]
    if not (
        isinstance(expand, fx.Node)
        and expand.op == "call_method"
        and expand.target == "expand"
        and len(expand.users) == 1
    ):
        return None
    index = expand.args[0]
    if not (
        isinstance(index, fx.Node)
        and index.op == "call_function"
        and index.target is operator.getitem
        and index.args[1] == _UNSQUEEZE_2
        and len(index.users) == 1
        and isinstance(index.args[0], fx.Node)
    ):
        return None
    kv = index.args[0]
    kv_val, expanded, out = (
        example_value(kv),
        example_value(expand),
        example_value(node),
    )
    if not all(isinstance(t, torch.Tensor) for t in (kv_val, expanded, out)):
        return None
    if kv_val.dim() != 4 or expanded.dim() != 5 or out.dim() != 4:
        return None
    b, h, s, d = kv_val.shape
    n = expanded.shape[2]
    expected_expand = (b, h, n, s, d)
    expected_out = (b, h * n, s, d)
    if all(map(known_equal, expanded.shape, expected_expand)) and all(
        map(known_equal, out.shape, expected_out)
    ):
        return kv, n
    return None


def _erase_unused(
    graph: fx.Graph, node: fx.Node, erased: set[fx.Node] | None = None
) -> None:
    """Erase ``node`` and then each of its inputs no one else uses (views and size
    arithmetic of the repeat: nothing with an effect)."""
    erased = set() if erased is None else erased
    if node in erased or node.users or node.op not in ("call_method", "call_function"):
        return
    inputs = node.all_input_nodes
    graph.erase_node(node)
    erased.add(node)
    for a in inputs:
        if (
            a.op == "call_function" and a.target in (operator.getitem, operator.mul)
        ) or (a.op == "call_method" and a.target == "expand"):
            _erase_unused(graph, a, erased)
