"""The Triton kernel behind ``stitch::attention`` on CUDA (imports Triton).

Only :mod:`stitch.runtime.triton_attention` imports this module, on the op's
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
    scale,
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
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """One program per (token i, head h): token i is the newest of cache slot i.

    The new k/v are written to ``cache[i, pos]`` and attended to from registers,
    the older entries ``cache[i, :pos]`` in tiles of ``BLOCK_L`` with an online
    softmax; so the kernel never reads what it wrote (no barrier needed).  A
    negative position is a padding token: no write, zero output.
    """
    i = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    pos = tl.load(POS + i).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    # A per-lane mask: a scalar condition broadcast by `&` trips the interpreter.
    valid = (d * 0 + pos) >= 0
    pos = tl.maximum(pos, 0)
    q = tl.load(Q + i * stride_qn + h * stride_qh + d, mask=dmask, other=0.0).to(
        tl.float32
    )
    # Rounded to the cache dtype first, as the torch implementation reads them back.
    k_new = tl.load(K + i * stride_kn + h * stride_kh + d, mask=dmask, other=0.0).to(
        KC.dtype.element_ty
    )
    v_new = tl.load(V + i * stride_vn + h * stride_vh + d, mask=dmask, other=0.0).to(
        VC.dtype.element_ty
    )
    row = i * stride_cs + h * stride_ch
    tl.store(KC + row + pos * stride_cl + d, k_new, mask=dmask & valid)
    tl.store(VC + row + pos * stride_cl + d, v_new, mask=dmask & valid)

    m = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
    total = m * 0.0 + 1.0
    acc = v_new.to(tl.float32)
    for start in range(0, pos, BLOCK_L):
        offs = start + tl.arange(0, BLOCK_L)
        lmask = offs < pos
        tile = row + offs[:, None] * stride_cl + d[None, :]
        tmask = lmask[:, None] & dmask[None, :]
        keys = tl.load(KC + tile, mask=tmask, other=0.0).to(tl.float32)
        s = tl.sum(keys * q[None, :], axis=1) * scale
        s = tl.where(lmask, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        values = tl.load(VC + tile, mask=tmask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * values, axis=0)
        total = total * alpha + tl.sum(p, axis=0)
        m = m_new
    result = tl.where(valid, acc / total, 0.0)
    tl.store(
        OUT + i * stride_on + h * stride_oh + d,
        result.to(OUT.dtype.element_ty),
        mask=dmask,
    )
