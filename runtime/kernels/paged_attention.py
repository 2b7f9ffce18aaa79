"""``stitch::paged_attention``: varlen attention over a paged KV cache that it writes.

The op of transformers' continuous batching (``generate_batch``, ``transformers
serve``): one call per layer and step takes the new tokens of every sequence in
the batch, packed (prefill chunks and decode tokens mixed), writes their keys
and values into the layer's paged cache in place, and attends causally within
each sequence's chunk and over its cached prefix.  It owns the cache write, so
no ``torch.compiler.disable``d function is left in the model's call (see
stitch.runtime.hf.engine), and Stitch splits that call's graph at it (add it to
``splitting_ops``; :data:`PAGED_ATTENTION_OP`).

NOTE: [the paged batch of transformers' engine]
Read from transformers 5.23 and 5.24 (generation/continuous_batching/): the
engine's batch is ``[1, tokens]`` (``input_ids``, ``position_ids``), its
attention gets ``query [1, heads, tokens, dim]`` and ``key``/``value [1,
kv_heads, tokens, dim]`` and, as keywords, the ``PagedAttentionCache``
(``cache`` through 5.23; Stitch's ``stitch_paged_cache`` under its saved
forward, in every version: NOTE: [transformers' engine across versions]),
``cu_seq_lens_q [seqs + 1]``, ``cu_seq_lens_k`` and ``max_length_k`` (dicts per
layer type), ``read_index`` and ``write_index`` (lists of int64 tensors, one per
cache allocator), a 4D additive ``attention_mask`` built on the host for
eager/SDPA, and ``block_table`` (None unless flash's decode fast path is on).
``cache.update`` (``@torch.compiler.disable``; called by the attention
function through 5.23, by the attention module in 5.24) writes ``key`` at
``write_index`` into the layer's token rows (``_kv_token_views[layer]``, two
shifted views of one flat byte tensor) and returns the keys at ``read_index``:

- full attention: write, then read; the read rows of a sequence are its whole
  history (cached prefix and new chunk) in position order; an empty
  ``read_index`` (no sequence has a prefix) returns the new keys themselves;
- sliding window: read, then write (the ring buffer's writes can overwrite rows
  still read); read rows equal to the allocator's ``sentinel_index`` stand for
  the new keys, in order.

Sequence ``s``'s queries are ``cu_seq_lens_q[s]:cu_seq_lens_q[s+1]`` and its
keys ``cu_seq_lens_k[s]:cu_seq_lens_k[s+1]`` in the read order; query ``i`` of a
chunk of ``lq`` over ``lk`` keys attends key ``j`` when ``j <= lk - lq + i``
(and, with a window ``w``, ``j > lk - lq + i - w``): the mask transformers
builds (``build_attention_mask``).  Padding (the engine pads under compile):
query rows past ``cu_seq_lens_q[-1]``, write rows that point at the trash
sector, read rows past ``cu_seq_lens_k[-1]``; the op writes every write row, as
transformers does, and gives padding queries a zero output.

Importing this module registers the op; it needs only torch (triton_paged.py
registers the Triton kernel for CUDA tensors).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from stitch.core.errors import StitchRuntimeError

from .schema import define_op, schema

PAGED_ATTENTION_OP = "stitch::paged_attention"


class PagedCall(NamedTuple):
    """The op's arguments, in its schema's order.

    See NOTE: [an op's arguments, declared once] (schema.py): the schema
    registered below, the torch implementation, the CUDA launcher and the
    Triton kernel's arguments (triton_paged.py) all read these fields.

    ``query, out``: ``[tokens, heads, dim]``; ``key, value``: ``[tokens,
    kv_heads, dim]`` (``heads`` a multiple of ``kv_heads``); ``k_cache,
    v_cache``: ``[rows, kv_heads, dim]``, written at ``write_index [tokens]``;
    ``read_index [keys]``: the cache rows of every sequence's keys (empty: the
    new keys are all the keys).  ``read_after_write``: read after the write
    (full attention) or before it, with rows equal to ``sentinel`` taking the
    new keys in order (sliding window).  ``window`` > 0: the last ``window``
    keys, the query's own included; ``softcap`` > 0: ``softcap * tanh(score /
    softcap)``; ``sinks``: ``[heads]`` logits of a zero-valued extra column.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    write_index: torch.Tensor
    read_index: torch.Tensor
    cu_seq_lens_q: torch.Tensor
    cu_seq_lens_k: torch.Tensor
    out: torch.Tensor
    scale: float
    read_after_write: bool = True
    sentinel: int = -1
    window: int = 0
    softcap: float = 0.0
    sinks: torch.Tensor | None = None


# The arguments the op writes: the caches (two views of one storage,
# transformers' layout) and ``out``.
WRITTEN = ("k_cache", "v_cache", "out")


def paged_attention_reference(*args: Any) -> None:
    """The op's torch implementation, called as the op is (``args``:
    :class:`PagedCall`'s fields in order, trailing defaults optional)."""
    run_reference(PagedCall(*args))


def run_reference(call: PagedCall) -> None:
    """Paged varlen attention (NOTE: [the paged batch of transformers' engine]).

    The plain torch implementation: the CPU kernel, and the reference.  It
    materializes ``[heads, tokens, keys]`` scores, as transformers' SDPA path
    materializes its mask.
    """
    tokens = call.query.shape[0]
    if tokens == 0:
        return
    if call.write_index.device.type == "cpu":
        check_rows(call.k_cache, call.v_cache, call.write_index, call.read_index)
    if call.read_after_write:
        write_cache(call)
    key, value, read_index = call.key, call.value, call.read_index
    if read_index.numel() == 0:
        keys, values = key, value
    else:
        keys = call.k_cache.index_select(0, read_index)
        values = call.v_cache.index_select(0, read_index)
        if not call.read_after_write:
            new = (read_index == call.sentinel)[:, None, None]
            keys = keys.masked_scatter(new, key.to(keys.dtype))
            values = values.masked_scatter(new, value.to(values.dtype))
    if not call.read_after_write:
        write_cache(call)
    allowed = _allowed(
        call.cu_seq_lens_q, call.cu_seq_lens_k, tokens, keys.shape[0], call.window
    )
    call.out.copy_(
        _attend(call.query, keys, values, allowed, call.scale, call.softcap, call.sinks)
    )


def check_rows(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    write_index: torch.Tensor,
    read_index: torch.Tensor,
) -> None:
    """Refuse write or read rows outside the caches, by name and value.

    NOTE: [cache rows checked on CPU only]
    Reading the indices' range is a host sync on CUDA (every layer, every
    step), so only the CPU kernel checks; on CUDA an index out of range is
    ``index_copy_``'s device assert.  transformers' allocator hands out rows of
    its own blocks only, so this guards against a caller's bug, not the
    engine's normal path.
    """
    rows = min(k_cache.shape[0], v_cache.shape[0])
    for name, index in (("write_index", write_index), ("read_index", read_index)):
        bad = (index < 0) | (index >= rows)
        if index.numel() and bool(bad.any()):
            at = int(bad.nonzero()[0, 0])
            raise StitchRuntimeError(
                f"{PAGED_ATTENTION_OP}: {name}[{at}]={int(index[at])} is outside "
                f"the paged cache's {rows} rows (0 to {rows - 1}); no row was written"
            )


def write_cache(call: PagedCall) -> None:
    """Each new token's key and value into its row (every row of ``write_index``)."""
    call.k_cache.index_copy_(0, call.write_index, call.key.to(call.k_cache.dtype))
    call.v_cache.index_copy_(0, call.write_index, call.value.to(call.v_cache.dtype))


def _allowed(
    cu_q: torch.Tensor, cu_k: torch.Tensor, tokens: int, keys: int, window: int
) -> torch.Tensor:
    """``[tokens, keys]``: which key each query attends (no host syncs)."""
    cu_q, cu_k = cu_q.long(), cu_k.long()
    seqs = cu_q.shape[0] - 1
    q_pos = torch.arange(tokens, device=cu_q.device)
    k_pos = torch.arange(keys, device=cu_q.device)
    # A sequence's index for every query and key: ``seqs`` past the last one
    # (padding rows, and zero-length padding sequences, own nothing).
    q_seq = torch.searchsorted(cu_q[1:], q_pos, right=True)
    k_seq = torch.searchsorted(cu_k[1:], k_pos, right=True)
    s = q_seq.clamp(max=seqs - 1)
    q_len, k_len = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    # The query's index among its sequence's keys (its own key's).
    last = (k_len - q_len)[s] + q_pos - cu_q[s]
    k_idx = k_pos - cu_k[k_seq.clamp(max=seqs - 1)]
    allowed = (q_seq[:, None] == k_seq[None, :]) & (q_seq < seqs)[:, None]
    allowed &= k_idx[None, :] <= last[:, None]
    if window:
        allowed &= k_idx[None, :] > last[:, None] - window
    return allowed


def _attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
    softcap: float,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """Masked attention (SDPA, or in float32 with softcap or sinks); a query with
    no key gets zeros.

    The query heads of one key/value head are grouped (NOTE: [query heads
    grouped, keys never repeated] in hf_attention.py).
    """
    tokens, heads, dim = query.shape
    if not softcap and sinks is None:
        # NOTE: [plain paged attention runs through SDPA]: SDPA's fused CPU kernel
        # over the same boolean mask is about 2.5x the matmul-softmax-matmul
        # below (256 queries over 8,000 keys); softcap and sinks need the latter.
        out = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(0, 1)[None],
            keys.to(query.dtype).transpose(0, 1)[None],
            values.to(query.dtype).transpose(0, 1)[None],
            attn_mask=allowed,
            scale=scale,
            enable_gqa=True,
        )[0].transpose(0, 1)
        # A query with every key masked (padding) is NaN out of SDPA: zeros.
        return torch.where(allowed.any(-1)[:, None, None], out, 0.0)
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    q = query.float().reshape(tokens, kv_heads, groups, dim).permute(1, 2, 0, 3)
    k = keys.float().permute(1, 2, 0)  # [kv_heads, dim, keys]
    v = values.float().permute(1, 0, 2)  # [kv_heads, keys, v_dim]
    scores = torch.matmul(q, k[:, None]) * scale  # [kv_heads, groups, tokens, keys]
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(kv_heads, groups, 1, 1)
        sink = sink.expand(kv_heads, groups, tokens, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    # A row with every key masked (padding) is NaN after the softmax: zero it.
    probs = torch.where(allowed.any(-1)[:, None], probs, 0.0)
    result = torch.matmul(probs, v[:, None])  # [kv_heads, groups, tokens, v_dim]
    return result.permute(2, 0, 1, 3).reshape(tokens, heads, -1).to(query.dtype)


# NOTE: [attention registered directly] in schema.py
_lib = define_op(
    PAGED_ATTENTION_OP,
    schema(PAGED_ATTENTION_OP.split("::")[1], PagedCall, WRITTEN),
    paged_attention_reference,
)
