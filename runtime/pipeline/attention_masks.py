"""Boolean SDPA masks made additive once, in the compiled piece that builds them.

NOTE: [boolean SDPA masks are converted once, before the split]
Eager ``scaled_dot_product_attention`` turns a boolean ``attn_mask`` into an
additive one on every call (``where(mask.logical_not(), -inf, 0)`` in the
query's dtype: two scalar tensors, a ``logical_not``, a ``where`` and a buffer)
before it runs a kernel.  Inductor lowers SDPA itself and fuses that conversion
into the kernel that builds the mask; a splitting SDPA, run eagerly by the
stitching, converts again in every layer, though every layer gets the same
mask.  On an 8-layer transformers Llama that is 16 small ops a decode step,
about 150 us at batch 8 on a 2-core CPU: all of Stitch's gap to torch.compile.

So before the split, each splitting SDPA call whose mask is a boolean CPU
tensor is given the additive mask instead, computed right after the boolean one
(once per mask and dtype), where Inductor compiles it into the piece that
builds the mask.  The values are SDPA's own (0 where attending, -inf where
not, in the query's dtype), and on the CPU SDPA picks its kernel from the
mask's shape, never its dtype, so outputs are unchanged.  A CUDA mask is left
alone: there SDPA converts with -65504, not -inf, when it picks cuDNN.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from stitch.codegen.matching import OpMatcher, node_key

SDPA = "aten::scaled_dot_product_attention"
MASK_POSITION = 3  # (query, key, value, attn_mask, dropout_p, is_causal, ...)


def additive_sdpa_masks(gm: fx.GraphModule, matcher: OpMatcher) -> int:
    """Give splitting SDPA calls with a boolean CPU mask an additive one; how many."""
    graph = gm.graph
    converted: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}
    count = 0
    for node in list(graph.nodes):
        if not _is_splitting_sdpa(node, matcher):
            continue
        mask, set_mask = _mask_argument(node)
        dtype = _query_dtype(node)
        if (
            not isinstance(mask, fx.Node)
            or dtype is None
            or bool(node.kwargs.get("is_causal", False))
        ):
            continue
        example = _example(mask)
        if (
            not isinstance(example, torch.Tensor)
            or example.dtype != torch.bool
            or example.device.type != "cpu"
        ):
            continue
        additive = converted.get((mask, dtype))
        if additive is None:
            additive = _insert_additive(graph, mask, example, dtype)
            converted[mask, dtype] = additive
        set_mask(additive)
        count += 1
    if count:
        graph.lint()
        gm.recompile()
    return count


def _is_splitting_sdpa(node: fx.Node, matcher: OpMatcher) -> bool:
    key = node_key(node)
    return key is not None and key.op == SDPA and matcher.matches(node)


def _mask_argument(node: fx.Node) -> tuple[object, object]:
    if "attn_mask" in node.kwargs:

        def set_kwarg(value: fx.Node) -> None:
            node.update_kwarg("attn_mask", value)

        return node.kwargs["attn_mask"], set_kwarg
    if len(node.args) > MASK_POSITION:

        def set_arg(value: fx.Node) -> None:
            node.update_arg(MASK_POSITION, value)

        return node.args[MASK_POSITION], set_arg
    return None, None


def _query_dtype(node: fx.Node) -> torch.dtype | None:
    query = node.args[0] if node.args else node.kwargs.get("query")
    example = _example(query) if isinstance(query, fx.Node) else None
    return example.dtype if isinstance(example, torch.Tensor) else None


def _example(node: fx.Node) -> object:
    return node.meta.get("example_value", node.meta.get("val"))


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
