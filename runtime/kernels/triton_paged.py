"""``stitch::paged_attention`` on CUDA: the cache write, then the Triton kernel.

Importing this module (the kernels package does, after ``paged_attention``)
registers :func:`paged_attention_triton` for the CUDA dispatch key; it needs no
Triton.  Triton is imported on the first CUDA call: where it is missing, or a
tensor layout is one the kernel does not take, the op runs the torch
implementation instead (NOTE: [attention registered directly] in schema.py, and optional_kernels.py).

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

import os
import sys
from types import ModuleType
from typing import Any

import torch

from . import static_launch
from .op_kernel import launch_of
from .optional_kernels import optional_kernels
from .paged_attention import PAGED_ATTENTION_OP, PagedCall, write_cache
from .schema import register_cuda


def triton_kernels() -> ModuleType | None:
    """The kernel module, or None when Triton cannot be imported (asked once)."""
    return optional_kernels(f"{__package__}.triton_paged_kernel", PAGED_ATTENTION_OP)


def kernel_supports(call: PagedCall) -> bool:
    """The layouts the kernel takes: unit stride in the head dim, one head dim."""
    dim = call.query.shape[-1]
    tensors = (call.query, call.key, call.value, call.k_cache, call.v_cache, call.out)
    sinks = call.sinks
    kv_heads = {t.shape[1] for t in tensors[1:5]}
    return (
        all(t.dim() == 3 and t.stride(2) == 1 and t.shape[2] == dim for t in tensors)
        and len(kv_heads) == 1
        and call.query.shape[1] % call.key.shape[1] == 0
        and (sinks is None or (sinks.dim() == 1 and sinks.stride(0) == 1))
    )


def paged_attention_triton(*args: Any, kernels: ModuleType | None = None) -> None:
    """``stitch::paged_attention`` with the Triton kernel (any device Triton
    runs on, its interpreter too); ``args`` as ``paged_attention_reference``'s.

    The prebuilt kernel for this specialization is launched without Triton
    when there is one (NOTE: [an op's Triton kernel without Triton] in
    static_launch.py); else Triton compiles it, and it is saved for the next
    process.
    """
    call = PagedCall(*args)
    chosen = launch_of(sys.modules[__name__], call, call.query, kernels)
    if chosen is None:
        return
    key, found, grid, arguments, constexprs = chosen
    if call.read_after_write:
        write_cache(call)
    if found is None:
        PREBUILT.launch(key, (*grid, 1), (*arguments, *constexprs.values()))
    else:
        compiled = found.paged_attention_kernel[grid](*arguments, **constexprs)
        if key is not None:
            PREBUILT.save(key, compiled)
    if not call.read_after_write:
        write_cache(call)


def kernel_arguments(
    call: PagedCall,
) -> tuple[tuple[int, int], tuple[Any, ...], dict[str, Any]]:
    """The kernel's grid (NOTE: [query blocks of a varlen batch]), its
    arguments in order and its constexprs, all from shapes (no host syncs)."""
    tokens, heads, dim = call.query.shape
    kv_heads = call.key.shape[1]
    groups = heads // kv_heads
    seqs = call.cu_seq_lens_q.shape[0] - 1
    has_read = call.read_index.numel() > 0
    has_sentinels = has_read and not call.read_after_write
    # The new key of each sentinel row: the sentinels take the new keys in order.
    src = call.read_index
    if has_sentinels:
        src = torch.cumsum(call.read_index == call.sentinel, 0) - 1
    # Prefill chunks fill taller tiles; a decode step's token fills its group's rows.
    block_m = 64 if tokens >= 8 * max(seqs, 1) else 16
    block_m = max(block_m, 1 << (groups - 1).bit_length())
    block_q = max(block_m // groups, 1)
    block_d = max(16, 1 << (dim - 1).bit_length())
    block_n = 64 if block_d <= 128 else 32
    half = (torch.float16, torch.bfloat16)
    dtype = call.query.dtype
    fp32_dot = not (dtype == call.key.dtype == call.k_cache.dtype and dtype in half)
    args = (
        call.query,
        call.key,
        call.value,
        call.k_cache,
        call.v_cache,
        # any pointer where there are none
        call.read_index if has_read else call.write_index,
        src if has_read else call.write_index,
        call.cu_seq_lens_q,
        call.cu_seq_lens_k,
        call.out,
        call.sinks if call.sinks is not None else call.query,
        float(call.scale),
        float(call.softcap),
        int(call.window),
        seqs,
        tokens,
        int(call.sentinel),
        call.query.stride(0),
        call.query.stride(1),
        call.key.stride(0),
        call.key.stride(1),
        call.value.stride(0),
        call.value.stride(1),
        call.k_cache.stride(0),
        call.k_cache.stride(1),
        call.v_cache.stride(0),
        call.v_cache.stride(1),
        call.out.stride(0),
        call.out.stride(1),
    )
    constexprs = dict(
        GROUPS=groups,
        HAS_READ=has_read,
        HAS_SENTINELS=has_sentinels,
        HAS_WINDOW=call.window > 0,
        HAS_SOFTCAP=bool(call.softcap),
        HAS_SINKS=call.sinks is not None,
        FP32_DOT=fp32_dot,
        HEAD_DIM=dim,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
    )
    return (tokens // block_q + seqs + 1, kv_heads), args, constexprs


# The kernel's pointer arguments come first, then two floats, then integers.
_POINTERS, _FLOATS = 11, 2


def specialization_key(
    device: int, args: tuple[Any, ...], constexprs: dict[str, Any]
) -> tuple[Any, ...]:
    """What Triton specializes the kernel on, for ``kernel_arguments``' results."""
    return static_launch.specialization_key(
        device, args, tuple(constexprs.values()), pointers=_POINTERS, floats=_FLOATS
    )


PREBUILT = static_launch.PrebuiltKernels(
    PAGED_ATTENTION_OP,
    os.path.join(os.path.dirname(__file__), "triton_paged_kernel.py"),
)

_lib = register_cuda(PAGED_ATTENTION_OP, paged_attention_triton)
