"""The Triton kernel behind ``stitch::paged_attention`` on CUDA (imports Triton).

Only :mod:`.triton_paged` imports this module, on the op's first CUDA call;
nothing else in Stitch needs Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def paged_attention_kernel(
    Q,
    K,
    V,
    KC,
    VC,
    READ,
    SRC,
    CU_Q,
    CU_K,
    OUT,
    SINKS,
    scale,
    softcap,
    window,
    seqs,
    tokens,
    sentinel,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcr,
    stride_kch,
    stride_vcr,
    stride_vch,
    stride_ot,
    stride_oh,
    GROUPS: tl.constexpr,
    HAS_READ: tl.constexpr,
    HAS_SENTINELS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    FP32_DOT: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program per (query block, key/value head): flash attention over one
    sequence's keys, read through the read indices.

    NOTE: [query blocks of a varlen batch]
    Sequence ``s``'s queries are cut into blocks of ``BLOCK_Q`` tokens numbered
    from ``cu_q[s] // BLOCK_Q + s`` on (vLLM's unified attention numbers them
    so): the numbers of two sequences never overlap, some numbers belong to no
    block (their programs return at once), and ``tokens // BLOCK_Q + seqs + 1``
    programs cover every block without reading the lengths on the host.  The
    tokens past ``cu_q[seqs]`` (the engine's padding) are one more sequence,
    ``seqs``, whose programs store zeros.  A program finds its sequence by a
    binary search over ``cu_q``.

    The tile's ``BLOCK_M`` rows are ``BLOCK_Q`` tokens times the ``GROUPS``
    query heads of key/value head ``kvh`` (row ``r``: token ``r // GROUPS``,
    head ``kvh * GROUPS + r % GROUPS``), so a decode step's one token fills a
    tile with its group's heads and each key tile is loaded once per group.

    Keys: the sequence's ``cu_k[s]:cu_k[s+1]`` in the read order, row
    ``READ[j]`` of the cache; without read indices (``HAS_READ`` false) row
    ``j`` of the new keys; with sentinels (sliding window, read before the
    write) a read row equal to ``sentinel`` is new key ``SRC[j]``.  Masks,
    window, softcap and sinks as ``paged_attention_reference``.
    """
    pid = tl.program_id(0)
    kvh = tl.program_id(1).to(tl.int64)
    # The last sequence s in [0, seqs] whose first block is at or before pid.
    lo: tl.int32 = 0
    hi: tl.int32 = seqs + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(CU_Q + mid) // BLOCK_Q + mid <= pid:
            lo = mid + 1
        else:
            hi = mid
    s = lo - 1
    q_begin = tl.load(CU_Q + s).to(tl.int64)
    q_first = q_begin + (pid - (q_begin // BLOCK_Q + s)) * BLOCK_Q
    q_end = tl.load(CU_Q + tl.minimum(s + 1, seqs)).to(tl.int64)
    padding = s == seqs
    if padding:
        q_end = q_end * 0 + tokens
    if q_first >= q_end:
        return

    r = tl.arange(0, BLOCK_M)
    tok = q_first + r // GROUPS
    head = kvh * GROUPS + r % GROUPS
    rows = (r < BLOCK_Q * GROUPS) & (tok < q_end)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    qmask = rows[:, None] & dmask[None, :]
    out = OUT + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    if padding:
        zeros = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        tl.store(out, zeros.to(OUT.dtype.element_ty), mask=qmask)
        return

    q = tl.load(
        Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=qmask,
        other=0.0,
    )
    if FP32_DOT:
        q = q.to(tl.float32)
    k_begin = tl.load(CU_K + s).to(tl.int64)
    k_len = tl.load(CU_K + s + 1).to(tl.int64) - k_begin
    # The key index of each row's own token: its cached prefix, then the chunk.
    last = k_len - (q_end - q_begin) + (tok - q_begin)
    k_stop = tl.max(tl.where(rows, last, -1), axis=0) + 1
    k_start = k_stop * 0
    if HAS_WINDOW:
        k_start = tl.maximum(k_len - (q_end - q_begin) + (q_first - q_begin), 0)
        k_start = tl.maximum(k_start - window + 1, 0)

    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # NOTE: [a while loop over the tiles] (triton_attention_kernel.py)
    start = k_start
    while start < k_stop:
        offs = start + tl.arange(0, BLOCK_N)
        kmask = offs < k_stop
        j = k_begin + offs
        tmask = kmask[:, None] & dmask[None, :]
        if HAS_READ:
            row = tl.load(READ + j, mask=kmask, other=0).to(tl.int64)
            cached = kmask
            if HAS_SENTINELS:
                new = kmask & (row == sentinel)
                cached = kmask & (row != sentinel)
            kc = KC + row[:, None] * stride_kcr + kvh * stride_kch + d[None, :]
            vc = VC + row[:, None] * stride_vcr + kvh * stride_vch + d[None, :]
            cmask = cached[:, None] & dmask[None, :]
            keys = tl.load(kc, mask=cmask, other=0.0)
            values = tl.load(vc, mask=cmask, other=0.0)
            if HAS_SENTINELS:
                # New keys rounded to the cache dtype, as the reference reads them.
                src = tl.load(SRC + j, mask=new, other=0).to(tl.int64)
                nmask = new[:, None] & dmask[None, :]
                k_new = tl.load(
                    K + src[:, None] * stride_kt + kvh * stride_kh + d[None, :],
                    mask=nmask,
                    other=0.0,
                ).to(KC.dtype.element_ty)
                v_new = tl.load(
                    V + src[:, None] * stride_vt + kvh * stride_vh + d[None, :],
                    mask=nmask,
                    other=0.0,
                ).to(VC.dtype.element_ty)
                keys = tl.where(nmask, k_new, keys)
                values = tl.where(nmask, v_new, values)
        else:
            keys = tl.load(
                K + j[:, None] * stride_kt + kvh * stride_kh + d[None, :],
                mask=tmask,
                other=0.0,
            )
            values = tl.load(
                V + j[:, None] * stride_vt + kvh * stride_vh + d[None, :],
                mask=tmask,
                other=0.0,
            )
        if FP32_DOT:
            scores = tl.dot(q, tl.trans(keys.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(keys))
        scores = scores * scale
        if HAS_SOFTCAP:
            scores = _softcap(scores, softcap)
        allowed = rows[:, None] & kmask[None, :] & (offs[None, :] <= last[:, None])
        if HAS_WINDOW:
            allowed = allowed & (offs[None, :] > last[:, None] - window)
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        # A row with no key yet keeps a -inf maximum: subtract 0 there, not -inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(scores - m_safe[:, None])
        total = total * alpha + tl.sum(p, axis=1)
        if FP32_DOT:
            pv = tl.dot(p, values.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(values.dtype), values)
        acc = acc * alpha[:, None] + pv
        m = m_new
        start += BLOCK_N

    has_keys = total > 0.0
    if HAS_SINKS:
        # One more softmax column whose value is zero: it adds to the total only.
        sink = tl.load(SINKS + head, mask=rows, other=0.0).to(tl.float32)
        m_new = tl.maximum(m, sink)
        alpha = tl.exp(m - m_new)
        acc = acc * alpha[:, None]
        total = total * alpha + tl.exp(sink - m_new)
    result = acc / tl.where(has_keys, total, 1.0)[:, None]
    result = tl.where(has_keys[:, None], result, 0.0)
    tl.store(out, result.to(OUT.dtype.element_ty), mask=qmask)


@triton.jit
def _softcap(x, cap):
    # cap * tanh(x / cap), with tanh from exp (tl has no portable tanh):
    # exp overflows to inf for large x, and 1 - 2 / inf is 1, as tanh.
    return cap * (1.0 - 2.0 / (tl.exp(2.0 * x / cap) + 1.0))
