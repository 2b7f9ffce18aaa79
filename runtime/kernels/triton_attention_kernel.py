"""The Triton kernel behind ``stitch::attention`` on CUDA (imports Triton).

Only :mod:`.triton_attention` imports this module, on the op's
first CUDA call; nothing else in Stitch needs Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def decode_attention_kernel(
    Q,
    K,
    V,
    KC,
    VC,
    POS,
    OUT,
    SINKS,
    scale,
    softcap,
    window,
    stride_qn,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_on,
    stride_oh,
    stride_cs,
    stride_cl,
    stride_ch,
    GROUPS: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """One program per (token i, head h): token i is the newest of cache slot i.

    The new k/v are written to ``cache[i, pos]`` and attended to from registers,
    the older entries ``cache[i, :pos]`` in tiles of ``BLOCK_L`` with an online
    softmax; so the kernel never reads what it wrote (no barrier needed).  A
    negative position is a padding token: no write, zero output.  Query head
    ``h`` reads key/value head ``h // GROUPS``; the first head of a group writes
    the cache.  Sinks, softcapping and the window as ``attention_reference``.
    """
    i = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    kvh = h // GROUPS
    pos = tl.load(POS + i).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    # A per-lane mask: a scalar condition broadcast by `&` trips the interpreter.
    valid = (d * 0 + pos) >= 0
    writes = valid & ((d * 0 + h % GROUPS) == 0)
    pos = tl.maximum(pos, 0)
    q = tl.load(Q + i * stride_qn + h * stride_qh + d, mask=dmask, other=0.0).to(
        tl.float32
    )
    # Rounded to the cache dtype first, as the torch implementation reads them back.
    k_new = tl.load(K + i * stride_kn + kvh * stride_kh + d, mask=dmask, other=0.0).to(
        KC.dtype.element_ty
    )
    v_new = tl.load(V + i * stride_vn + kvh * stride_vh + d, mask=dmask, other=0.0).to(
        VC.dtype.element_ty
    )
    row = i * stride_cs + kvh * stride_ch
    tl.store(KC + row + pos * stride_cl + d, k_new, mask=dmask & writes)
    tl.store(VC + row + pos * stride_cl + d, v_new, mask=dmask & writes)

    m = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
    if HAS_SOFTCAP:
        m = _softcap(m, softcap)
    total = m * 0.0 + 1.0
    acc = v_new.to(tl.float32)
    # The window's first position: the token's own and the window - 1 before it.
    first = pos * 0
    if HAS_WINDOW:
        first = tl.maximum(pos - window + 1, 0)
    # NOTE: [a while loop over the tiles]
    # `for start in range(first // BLOCK_L * BLOCK_L, pos, BLOCK_L)` is the same
    # loop, but triton 3.6's interpreter takes a range bound with int() of a
    # one-element numpy array, an error from numpy 2.4 on; a while loop reads
    # it with bool(), which every version takes, and compiles to the same scf loop.
    start = first // BLOCK_L * BLOCK_L
    while start < pos:
        offs = start + tl.arange(0, BLOCK_L)
        lmask = (offs < pos) & (offs >= first)
        tile = row + offs[:, None] * stride_cl + d[None, :]
        tmask = lmask[:, None] & dmask[None, :]
        keys = tl.load(KC + tile, mask=tmask, other=0.0).to(tl.float32)
        s = tl.sum(keys * q[None, :], axis=1) * scale
        if HAS_SOFTCAP:
            s = _softcap(s, softcap)
        s = tl.where(lmask, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        values = tl.load(VC + tile, mask=tmask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * values, axis=0)
        total = total * alpha + tl.sum(p, axis=0)
        m = m_new
        start += BLOCK_L
    if HAS_SINKS:
        # One more softmax column whose value is zero: it adds to the total only.
        sink = tl.load(SINKS + h).to(tl.float32)
        m_new = tl.maximum(m, sink)
        alpha = tl.exp(m - m_new)
        acc = acc * alpha
        total = total * alpha + tl.exp(sink - m_new)
    result = tl.where(valid, acc / total, 0.0)
    tl.store(
        OUT + i * stride_on + h * stride_oh + d,
        result.to(OUT.dtype.element_ty),
        mask=dmask,
    )


@triton.jit
def _softcap(x, cap):
    # cap * tanh(x / cap), with tanh from exp (tl has no portable tanh):
    # exp overflows to inf for large x, and 1 - 2 / inf is 1, as tanh.
    return cap * (1.0 - 2.0 / (tl.exp(2.0 * x / cap) + 1.0))
