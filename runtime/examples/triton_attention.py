"""``stitch::attention`` on CUDA: launches the Triton decode-attention kernel.

Importing this module (the examples package does, after ``ops``) registers :func:`decode_attention` for the
CUDA dispatch key; it needs no Triton.  Triton is imported on the first CUDA
call: where it is missing, or a tensor layout is one the kernel does not take,
the op runs the torch implementation instead (also graph-capturable).
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType

import torch

from .ops import ATTENTION_OP, attention_reference

log = logging.getLogger("stitch")


@functools.cache
def triton_kernels() -> ModuleType | None:
    """The kernel module, or None when Triton cannot be imported (asked once)."""
    try:
        from . import triton_attention_kernel
    except (
        Exception
    ) as exc:  # noqa: BLE001 - ImportError, or a Triton that cannot start
        log.warning(
            "stitch: Triton is unavailable (%s: %s); stitch::attention runs the torch "
            "implementation on CUDA",
            type(exc).__name__,
            exc,
        )
        return None
    return triton_attention_kernel


def kernel_supports(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    out: torch.Tensor,
    sinks: torch.Tensor | None = None,
) -> bool:
    """The layouts the kernel takes: unit stride in the head dim, equal cache strides."""
    return (
        all(t.dim() == 3 and t.stride(2) == 1 for t in (q, k, v, out))
        and q.shape[1] % k.shape[1] == 0
        and (sinks is None or (sinks.dim() == 1 and sinks.stride(0) == 1))
        and k_cache.dim() == 4
        and k_cache.stride() == v_cache.stride()
        and k_cache.stride(3) == 1
        and positions.dim() == 1
        and (positions.stride(0) == 1 or positions.shape[0] <= 1)
    )


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
    window: int = 0,
    *,
    kernels: ModuleType | None = None,
) -> None:
    """Launch the Triton kernel (any device Triton runs on, its interpreter too)."""
    kernels = kernels if kernels is not None else triton_kernels()
    n, heads, dim = q.shape
    if n == 0:
        return
    if kernels is None or not kernel_supports(
        q, k, v, k_cache, v_cache, positions, out, sinks
    ):
        attention_reference(
            q, k, v, k_cache, v_cache, positions, out, scale, sinks, softcap, window
        )
        return
    block_d = 1 << (dim - 1).bit_length()
    # Two [BLOCK_L, BLOCK_D] fp32 tiles per program stay in registers.
    block_l = max(16, min(64, 4096 // block_d))
    kernels.decode_attention_kernel[(n, heads)](
        q,
        k,
        v,
        k_cache,
        v_cache,
        positions,
        out,
        sinks if sinks is not None else q,  # any pointer where there are none
        float(scale),
        float(softcap),
        int(window),
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        GROUPS=heads // k.shape[1],
        HAS_SINKS=sinks is not None,
        HAS_SOFTCAP=bool(softcap),
        HAS_WINDOW=window > 0,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        BLOCK_L=block_l,
    )


# Registered directly on the CUDA key: torch.library.register_kernel would wrap
# the kernel in a dynamo-disabling decorator, a cost on every call.
_lib = torch.library.Library(ATTENTION_OP.split("::")[0], "IMPL")
_lib.impl(ATTENTION_OP.split("::")[1], decode_attention, "CUDA")
