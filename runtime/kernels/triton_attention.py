"""``stitch::attention`` on CUDA: launches the Triton decode-attention kernel.

Importing this module (the kernels package does, after ``attention``) registers
:func:`decode_attention` for the CUDA dispatch key; it needs no Triton.  Triton
is imported on the first CUDA call (optional_kernels.py): where it is missing, or a tensor
layout is one the kernel does not take, the op runs the torch implementation
instead (also graph-capturable).
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType
from typing import Any

from . import static_launch
from .attention import ATTENTION_OP, AttentionCall
from .op_kernel import launch_of
from .optional_kernels import optional_kernels
from .schema import register_cuda


def triton_kernels() -> ModuleType | None:
    """The kernel module, or None when Triton cannot be imported (asked once)."""
    return optional_kernels(f"{__package__}.triton_attention_kernel", ATTENTION_OP)


def kernel_supports(call: AttentionCall) -> bool:
    """The layouts the kernel takes: unit stride in the head dim, equal cache strides."""
    q, k, v, k_cache, v_cache, positions, out, _, sinks, _, _ = call
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


def decode_attention(*args: Any, kernels: ModuleType | None = None) -> None:
    """Launch the Triton kernel (any device Triton runs on, its interpreter too);
    ``args``: :class:`AttentionCall`'s fields in order, as the op is called."""
    call = AttentionCall(*args)
    chosen = launch_of(sys.modules[__name__], call, call.q, kernels)
    if chosen is None:
        return
    key, found, grid, arguments, constexprs = chosen
    if found is None:
        PREBUILT.launch(key, (*grid, 1), (*arguments, *constexprs))
    else:
        launch(found, grid, arguments, constexprs, key)


def kernel_arguments(
    call: AttentionCall,
) -> tuple[tuple[int, int], tuple[Any, ...], tuple[Any, ...]]:
    """The kernel's grid, its arguments in order, and its constexprs (``CONSTEXPRS``)."""
    q, k, v, k_cache, v_cache, positions, out, scale, sinks, softcap, window = call
    n, heads, dim = q.shape
    block_d = 1 << (dim - 1).bit_length()
    # Two [BLOCK_L, BLOCK_D] fp32 tiles per program stay in registers.
    block_l = max(16, min(64, 4096 // block_d))
    args = (
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
    )
    constexprs = (
        heads // k.shape[1],  # GROUPS
        sinks is not None,  # HAS_SINKS
        bool(softcap),  # HAS_SOFTCAP
        window > 0,  # HAS_WINDOW
        dim,  # HEAD_DIM
        block_d,  # BLOCK_D
        block_l,  # BLOCK_L
    )
    return (n, heads), args, constexprs


CONSTEXPRS = (
    "GROUPS",
    "HAS_SINKS",
    "HAS_SOFTCAP",
    "HAS_WINDOW",
    "HEAD_DIM",
    "BLOCK_D",
    "BLOCK_L",
)
# The kernel's pointer arguments come first, then two floats, then integers.
_POINTERS, _FLOATS = 8, 2

# NOTE: [launching the compiled kernel directly]
# ``kernel[grid](...)`` costs about 21 µs of host time per launch (Triton 3.6 on
# an H100 machine): binding the arguments, computing the specialization key,
# finding the compiled kernel.  Under PIECEWISE graphs the op runs eagerly once
# per layer, so that is paid layers times per forward.  After a first launch
# through Triton, the compiled kernel is held under a key of what Triton
# specializes a kernel on (tensor dtypes and 16-byte alignment, integers equal
# to 1, divisible by 16 or beyond int32, the constexprs, the device) and
# launched the way JITFunction.run launches it once found: 8.8 µs
# (bench/attention_launch.py, docs/gpu/h100_attention_launch.md); launch hooks
# and metadata are passed on as Triton does.  The sequence uses Triton
# internals, so it is used only with the Triton releases it was checked on
# (DIRECT_LAUNCH_TRITON) and never under the interpreter; elsewhere every launch
# goes through ``kernel[grid]``.  STITCH_TRITON_DIRECT_LAUNCH=0 turns it off.
DIRECT_LAUNCH_TRITON = ("3.6.",)
_compiled: dict[tuple[Any, ...], Any] = {}


def specialization_key(
    device: int, args: tuple[Any, ...], constexprs: tuple[Any, ...]
) -> tuple[Any, ...]:
    """What Triton specializes the kernel on, for ``args`` in the kernel's order."""
    return static_launch.specialization_key(
        device, args, constexprs, pointers=_POINTERS, floats=_FLOATS
    )


# NOTE: [an op's Triton kernel without Triton] in static_launch.py;
# STITCH_KEEP_KERNELS=0 turns saving and launching prebuilt kernels off.
PREBUILT = static_launch.PrebuiltKernels(
    ATTENTION_OP, os.path.join(os.path.dirname(__file__), "triton_attention_kernel.py")
)


@functools.cache
def _direct_launch() -> Any:
    """Triton's launch pieces when the direct launch applies, else None (asked once)."""
    if os.environ.get("STITCH_TRITON_DIRECT_LAUNCH", "1") == "0":
        return None
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return None
    try:
        import triton
        from triton import knobs
        from triton.runtime import driver
    except ImportError:
        return None
    if not triton.__version__.startswith(DIRECT_LAUNCH_TRITON):
        return None
    return knobs.runtime, driver.active


def launch(
    kernels: ModuleType,
    grid: tuple[int, int],
    args: tuple[Any, ...],
    constexprs: tuple[Any, ...],
    key: tuple[Any, ...] | None = None,
) -> None:
    """Launch the kernel on ``grid``; directly when a compiled kernel for ``args`` is
    at hand.  ``key``: their :func:`specialization_key`, when known."""
    ours = kernels is triton_kernels()
    direct = _direct_launch() if ours else None
    saves = ours and static_launch.enabled()
    device = args[0].device.index
    if key is None and (direct is not None or saves):
        key = specialization_key(device, args, constexprs)
    compiled = _compiled.get(key) if direct is not None else None
    if compiled is None:
        compiled = kernels.decode_attention_kernel[grid](
            *args, **dict(zip(CONSTEXPRS, constexprs, strict=True))
        )
        if hasattr(compiled, "result"):  # compiled in the background
            compiled = compiled.result()
        if saves:
            PREBUILT.save(key, compiled)
        if direct is not None and all(
            hasattr(compiled, a) for a in ("run", "function", "packed_metadata")
        ):
            _compiled[key] = compiled
        return
    runtime, active = direct
    everything = (*args, *constexprs)
    stream = active.get_current_stream(device)
    compiled.run(
        grid[0],
        grid[1],
        1,
        stream,
        compiled.function,
        compiled.packed_metadata,
        compiled.launch_metadata(grid, stream, *everything),
        runtime.launch_enter_hook,
        runtime.launch_exit_hook,
        *everything,
    )


_lib = register_cuda(ATTENTION_OP, decode_attention)
