"""``stitch::hf_attention``: attention that writes into an output buffer.

The serving-stack shape of an attention op (like vLLM's ``unified_attention``):
the caller allocates ``out`` and the op fills it and returns nothing.  Stitch
splits the graph at it (it is a default splitting op), so it runs eagerly
between the compiled pieces while the allocation of ``out`` stays in the piece
before it (split.py's NOTE: [allocations between splitting ops]).

Importing this module registers the op; it needs only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HF_ATTENTION_OP = "stitch::hf_attention"

# NOTE: [attention registered directly] (examples/ops.py): the schema and the
# kernel are registered without torch.library.custom_op's Python layers.
_lib = torch.library.Library("stitch", "FRAGMENT")
_lib.define(
    "hf_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
    "Tensor(a4!) out, float scale, bool is_causal) -> ()"
)


def hf_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    out: torch.Tensor,
    scale: float,
    is_causal: bool,
) -> None:
    """Scaled dot-product attention into ``out``.

    ``query``: ``[batch, heads, q_len, head_dim]``; ``key``, ``value``:
    ``[batch, kv_heads, kv_len, head_dim]`` (``heads`` a multiple of
    ``kv_heads``: grouped-query attention); ``attn_mask``: a boolean (True:
    attend) or additive mask broadcastable to ``[batch, heads, q_len, kv_len]``,
    or None; ``out``: ``[batch, q_len, heads, v_head_dim]``, the layout the
    transformers attention functions return.
    """
    result = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        scale=scale,
        is_causal=is_causal,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    out.copy_(result.transpose(1, 2))


_lib.impl("hf_attention", hf_attention_reference, "CompositeExplicitAutograd")


@torch.library.register_fake(HF_ATTENTION_OP, lib=_lib)
def _hf_attention_fake(query, key, value, attn_mask, out, scale, is_causal) -> None:
    return None
