"""How an op's call launches its Triton kernel: the prebuilt one, Triton's,
or the op's torch implementation (NOTE: [an op's Triton kernel without
Triton] in static_launch.py), one choice for every Triton op
(``triton_attention.py``, ``triton_paged.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple, Protocol

import torch

from . import static_launch


class Launch(NamedTuple):
    """How an op launches its kernel on a call: ``kernels`` None, the prebuilt
    one saved for ``key``; else through Triton's ``kernels`` module, saving
    what it compiles under ``key`` unless that is None; on ``grid``, with
    ``arguments`` and ``constexprs``."""

    key: tuple[Any, ...] | None
    kernels: ModuleType | None
    grid: tuple[int, int]
    arguments: tuple[Any, ...]
    constexprs: Any


class OpModule(Protocol):
    """What a Triton op's module names of its kernel (read at each launch, so
    that what a test patches there is what launches): ``kernel_supports(call)``,
    whether the kernel takes a call; ``kernel_arguments(call)``, its grid,
    arguments and constexprs; ``run_reference(call)``, the op's torch
    implementation; ``specialization_key(device, arguments, constexprs)``,
    what Triton specializes on; ``triton_kernels()``, Triton's module (None
    without Triton); ``PREBUILT``, its prebuilt kernels."""

    PREBUILT: static_launch.PrebuiltKernels
    triton_kernels: Callable[[], ModuleType | None]
    specialization_key: Callable[..., tuple[Any, ...]]
    kernel_supports: Callable[[Any], bool]
    kernel_arguments: Callable[[Any], tuple[tuple[int, int], tuple[Any, ...], Any]]
    run_reference: Callable[[Any], None]


def launch_of(
    op: OpModule, call: Any, query: torch.Tensor, kernels: ModuleType | None
) -> Launch | None:
    """``call``'s launch of ``op``'s kernel on ``query``'s device: its prebuilt
    kernel when one is saved, else Triton's (``kernels`` when given: a test's,
    never saved).  None where there is nothing to launch: ``query`` has no
    rows, or the op ran its torch implementation instead (the kernel does not
    take the call, or Triton cannot be imported).  The key's parts are passed,
    not a closure over them: this runs at every launch."""
    if query.shape[0] == 0:
        return None
    if not op.kernel_supports(call):
        op.run_reference(call)
        return None
    grid, arguments, constexprs = op.kernel_arguments(call)
    key = None
    if kernels is None and static_launch.enabled():
        # NOTE: [an op's Triton kernel without Triton]
        key = op.specialization_key(query.device.index, arguments, constexprs)
        if op.PREBUILT.ready(key):
            return Launch(key, None, grid, arguments, constexprs)
    kernels = kernels if kernels is not None else op.triton_kernels()
    if kernels is None:
        op.run_reference(call)
        return None
    return Launch(key, kernels, grid, arguments, constexprs)
