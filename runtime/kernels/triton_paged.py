"""``stitch::paged_attention`` on CUDA: the cache write, then the Triton kernel.

Importing this module (the kernels package does, after ``paged_attention``) registers
:func:`paged_attention_triton` for the CUDA dispatch key; it needs no Triton.
Triton is imported on the first CUDA call: where it is missing, or a tensor
layout is one the kernel does not take, the op runs the torch implementation
instead (NOTE: [attention registered directly] in attention.py, and loader.py).

NOTE: [the paged cache write outside the kernel]
Full attention reads the cache after writing it, so a program may read rows
that another program writes: without a grid-wide barrier the write cannot be
part of the attention kernel.  It is two ``index_copy_`` launches before the
kernel (full attention) or after it (sliding window, which reads first and
takes the new keys at the sentinel rows from ``key`` itself); the stream
orders them.  Every write row is written, padding rows included, as the torch
implementation does.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from .loader import optional_kernels
from .paged_attention import PAGED_ATTENTION_OP, paged_attention_reference, write_cache


def triton_kernels() -> ModuleType | None:
    """The kernel module, or None when Triton cannot be imported (asked once)."""
    return optional_kernels(f"{__package__}.triton_paged_kernel", PAGED_ATTENTION_OP)


def kernel_supports(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    sinks: torch.Tensor | None,
) -> bool:
    """The layouts the kernel takes: unit stride in the head dim, one head dim."""
    dim = query.shape[-1]
    return (
        all(
            t.dim() == 3 and t.stride(2) == 1 and t.shape[2] == dim
            for t in (query, key, value, k_cache, v_cache, out)
        )
        and query.shape[1] % key.shape[1] == 0
        and key.shape[1] == value.shape[1] == k_cache.shape[1] == v_cache.shape[1]
        and (sinks is None or (sinks.dim() == 1 and sinks.stride(0) == 1))
    )


def paged_attention_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    write_index: torch.Tensor,
    read_index: torch.Tensor,
    cu_seq_lens_q: torch.Tensor,
    cu_seq_lens_k: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    read_after_write: bool = True,
    sentinel: int = -1,
    window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    *,
    kernels: ModuleType | None = None,
) -> None:
    """``stitch::paged_attention`` with the Triton kernel (any device Triton
    runs on, its interpreter too); the arguments as ``paged_attention_reference``."""
    kernels = kernels if kernels is not None else triton_kernels()
    arguments = (
        query,
        key,
        value,
        k_cache,
        v_cache,
        write_index,
        read_index,
        cu_seq_lens_q,
        cu_seq_lens_k,
        out,
        scale,
        read_after_write,
        sentinel,
        window,
        softcap,
        sinks,
    )
    if query.shape[0] == 0:
        return
    if kernels is None or not kernel_supports(
        query, key, value, k_cache, v_cache, out, sinks
    ):
        paged_attention_reference(*arguments)
        return
    if read_after_write:
        write_cache(key, value, k_cache, v_cache, write_index)
    grid, args, constexprs = kernel_arguments(*arguments)
    kernels.paged_attention_kernel[grid](*args, **constexprs)
    if not read_after_write:
        write_cache(key, value, k_cache, v_cache, write_index)


def kernel_arguments(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    write_index: torch.Tensor,
    read_index: torch.Tensor,
    cu_seq_lens_q: torch.Tensor,
    cu_seq_lens_k: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    read_after_write: bool = True,
    sentinel: int = -1,
    window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> tuple[tuple[int, int], tuple[Any, ...], dict[str, Any]]:
    """The kernel's grid (NOTE: [query blocks of a varlen batch]), its
    arguments in order and its constexprs, all from shapes (no host syncs)."""
    tokens, heads, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    seqs = cu_seq_lens_q.shape[0] - 1
    has_read = read_index.numel() > 0
    has_sentinels = has_read and not read_after_write
    # The new key of each sentinel row: the sentinels take the new keys in order.
    src = torch.cumsum(read_index == sentinel, 0) - 1 if has_sentinels else read_index
    # Prefill chunks fill taller tiles; a decode step's token fills its group's rows.
    block_m = 64 if tokens >= 8 * max(seqs, 1) else 16
    block_m = max(block_m, 1 << (groups - 1).bit_length())
    block_q = max(block_m // groups, 1)
    block_d = max(16, 1 << (dim - 1).bit_length())
    block_n = 64 if block_d <= 128 else 32
    half = (torch.float16, torch.bfloat16)
    fp32_dot = not (query.dtype == key.dtype == k_cache.dtype and query.dtype in half)
    args = (
        query,
        key,
        value,
        k_cache,
        v_cache,
        read_index if has_read else write_index,  # any pointer where there are none
        src if has_read else write_index,
        cu_seq_lens_q,
        cu_seq_lens_k,
        out,
        sinks if sinks is not None else query,
        float(scale),
        float(softcap),
        int(window),
        seqs,
        tokens,
        int(sentinel),
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        out.stride(0),
        out.stride(1),
    )
    constexprs = dict(
        GROUPS=groups,
        HAS_READ=has_read,
        HAS_SENTINELS=has_sentinels,
        HAS_WINDOW=window > 0,
        HAS_SOFTCAP=bool(softcap),
        HAS_SINKS=sinks is not None,
        FP32_DOT=fp32_dot,
        HEAD_DIM=dim,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
    )
    return (tokens // block_q + seqs + 1, kv_heads), args, constexprs


# Registered directly on the CUDA key: torch.library.register_kernel would wrap
# the kernel in a dynamo-disabling decorator, a cost on every call.
_lib = torch.library.Library(PAGED_ATTENTION_OP.split("::")[0], "IMPL")
_lib.impl(PAGED_ATTENTION_OP.split("::")[1], paged_attention_triton, "CUDA")
