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

from .schema import define_op

HF_ATTENTION_OP = "stitch::hf_attention"

# ``sinks`` and ``softcap`` have defaults, so graphs and callers written before
# they existed still bind.
_SCHEMA = (
    "hf_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
    "Tensor(a4!) out, float scale, bool is_causal, Tensor? sinks=None, "
    "float softcap=0.0) -> ()"
)


def hf_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    out: torch.Tensor,
    scale: float,
    is_causal: bool,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
) -> None:
    """Scaled dot-product attention into ``out``.

    ``query``: ``[batch, heads, q_len, head_dim]``; ``key``, ``value``:
    ``[batch, kv_heads, kv_len, head_dim]`` (``heads`` a multiple of
    ``kv_heads``: grouped-query attention); ``attn_mask``: a boolean (True:
    attend) or additive mask broadcastable to ``[batch, heads, q_len, kv_len]``,
    or None (``is_causal``: query ``i`` attends keys ``j <= i``, SDPA's
    upper-left alignment); ``out``: ``[batch, q_len, heads, v_head_dim]``, the
    layout the transformers attention functions return.

    ``sinks``: attention-sink logits broadcastable to ``[batch, heads, q_len,
    1]`` (GPT-OSS passes one per head): one more column of the softmax whose
    value is zero, so it only takes weight from the keys.  ``softcap`` > 0:
    scores become ``softcap * tanh(scores / softcap)`` before the mask (Gemma 2).
    """
    if sinks is None and not softcap:
        result = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            scale=scale,
            is_causal=is_causal,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    else:
        result = _explicit_attention(
            query, key, value, attn_mask, scale, is_causal, sinks, softcap
        )
    out.copy_(result.transpose(1, 2))


def _explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float,
    is_causal: bool,
    sinks: torch.Tensor | None,
    softcap: float,
) -> torch.Tensor:
    """Sinks and softcapping, which SDPA lacks: the scores are materialized.

    NOTE: [the order of the explicit attention]
    As transformers' eager functions of the models that need it (Gemma 2's,
    GPT-OSS's): scale, softcap, then the mask, then a softmax in float32 with
    the sink as an extra column that is dropped before the values.  A masked
    score is the dtype's minimum, as transformers' eager masks, not -inf: a row
    with every key masked (a padding query) stays finite.

    NOTE: [query heads grouped, keys never repeated]
    The ``groups`` query heads of one key/value head are folded into the query
    length (``[batch, kv_heads, groups * q_len, dim]``, a view), so one matmul
    per key/value head serves the group without copying keys and values per
    query head; the scores are viewed as ``[batch, kv_heads, groups, q_len,
    kv_len]`` to meet masks and sinks given per query head or shared.
    """
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * q_len, dim)
    scores = torch.matmul(folded, key.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(batch, kv_heads, groups, q_len, kv_len)
    lowest = torch.finfo(scores.dtype).min
    if attn_mask is not None:
        mask = _per_group(attn_mask, kv_heads, groups)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, lowest)
        else:
            scores = scores + mask
    elif is_causal:
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(~allowed.tril(), lowest)
    scores = scores.float()
    if sinks is not None:
        sink = _per_group(sinks.to(scores.dtype), kv_heads, groups)
        sink = sink.expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    probs = probs.to(value.dtype).view(batch, kv_heads, groups * q_len, kv_len)
    out = torch.matmul(probs, value)
    return out.view(batch, heads, q_len, value.shape[-1])


def _per_group(t: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """A tensor broadcastable to ``[batch, heads, q, k]`` as ``[batch, kv_heads, groups, q, k]``."""
    while t.dim() < 4:
        t = t.unsqueeze(0)
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.reshape(t.shape[0], kv_heads, groups, *t.shape[2:])


# NOTE: [attention registered directly] in schema.py
_lib = define_op(HF_ATTENTION_OP, _SCHEMA, hf_attention_reference)
