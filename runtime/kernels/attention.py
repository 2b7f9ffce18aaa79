"""``stitch::attention``: decode attention over a per-slot KV cache that it writes.

The result goes into ``out``: the kind of op serving stacks run eagerly between
compiled pieces (the default splitting op of the example models; transformers
models with Stitch's serving KV caches call it too).  Importing this module
registers the op with its torch implementation (the CPU kernel) and its fake;
triton_attention.py registers the CUDA kernel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .schema import define_op, schema

ATTENTION_OP = "stitch::attention"


class AttentionCall(NamedTuple):
    """The op's arguments, in its schema's order (see NOTE: [an op's arguments,
    declared once] in schema.py; :func:`run_reference` says what each is).

    The trailing arguments have defaults (no sinks, no softcap, no window): the
    example models and graphs traced before they existed pass eight.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    positions: torch.Tensor
    out: torch.Tensor
    scale: float
    sinks: torch.Tensor | None = None
    softcap: float = 0.0
    window: int = 0


# The arguments the op writes: the caches and ``out``.
WRITTEN = ("k_cache", "v_cache", "out")


def attention_reference(*args: Any) -> None:
    """The op's torch implementation, called as the op is (``args``:
    :class:`AttentionCall`'s fields in order, trailing defaults optional)."""
    run_reference(AttentionCall(*args))


def run_reference(call: AttentionCall) -> None:
    """Decode attention: token ``i`` is the newest token of sequence slot ``i``.

    ``q, out``: ``[n, heads, head_dim]``; ``k, v``: ``[n, kv_heads, head_dim]``
    (``heads`` a multiple of ``kv_heads``: grouped-query attention); ``k_cache,
    v_cache``: ``[max_seqs, max_len, kv_heads, head_dim]``; ``positions``: ``[n]``
    int64.  The token's k/v are written at ``cache[i, positions[i]]`` and
    ``q[i]`` attends over ``cache[i, : positions[i] + 1]``.  A negative position
    marks a padding token (CUDA graph padding): it writes no cache entry and its
    output is zero.

    ``sinks``: ``[heads]`` attention-sink logits (one more softmax column with a
    zero value, GPT-OSS); ``softcap`` > 0: scores become ``softcap *
    tanh(score / softcap)`` (Gemma 2); ``window`` > 0: only the last ``window``
    positions, the token's own included (transformers' sliding window).

    The plain torch implementation of ``stitch::attention``: the CPU kernel, and
    the reference for the CUDA one.
    """
    q, k, v, k_cache, v_cache, positions, out, scale, sinks, softcap, window = call
    n = q.shape[0]
    if n == 0:
        return
    # NOTE: [padding tokens] Selecting with torch.where instead of indexing by the
    # valid rows keeps this free of host syncs, so it can be captured in a graph.
    valid = (positions >= 0)[:, None, None]
    pos = positions.clamp(min=0)
    slots = torch.arange(n, device=q.device)
    k_cache[slots, pos] = torch.where(valid, k.to(k_cache.dtype), k_cache[slots, pos])
    v_cache[slots, pos] = torch.where(valid, v.to(v_cache.dtype), v_cache[slots, pos])
    groups = q.shape[1] // k_cache.shape[2]
    keys = k_cache[:n].float().repeat_interleave(groups, dim=2)  # [n, L, H, D]
    values = v_cache[:n].float().repeat_interleave(groups, dim=2)
    scores = torch.einsum("nhd,nlhd->nhl", q.float(), keys) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    length = k_cache.shape[1]
    slots_l = torch.arange(length, device=q.device)[None, :]
    masked = slots_l > pos[:, None]
    if window:
        masked = masked | (slots_l <= pos[:, None] - window)
    scores = scores.masked_fill(masked[:, None, :], float("-inf"))
    if sinks is not None:
        sink = sinks.float()[None, :, None].expand(n, -1, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    result = torch.einsum("nhl,nlhd->nhd", probs, values)
    out.copy_(torch.where(valid, result, 0.0).to(out.dtype))


# NOTE: [attention registered directly] in schema.py
_lib = define_op(
    ATTENTION_OP,
    schema(ATTENTION_OP.split("::")[1], AttentionCall, WRITTEN),
    attention_reference,
)
