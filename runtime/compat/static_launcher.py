"""torch's static CUDA launcher (``torch._C._StaticCudaLauncher``): Inductor
launches its Triton kernels through it, and Stitch launches its prebuilt cubins
through it (pipeline/prebuilt/triton_kernels.py, kernels/static_launch.py).

NOTE: [loading a cubin through torch's static launcher]
``_load_kernel(path, name, shared, device)`` loads the cubin into the CUDA
context current on the calling thread: ``device`` only names the device whose
shared-memory limit it reads (and whose primary context it makes current when
none is), so a function loaded for cuda:1 while cuda:0 is current belongs to
cuda:0's context and cannot be launched on cuda:1.  :func:`load_function`
loads under ``torch.cuda.device(device)``.  The load also does what Triton's
own loader does for shared memory (``loadKernel`` in
torch/csrc/inductor/static_cuda_launcher.cpp, as in 2.11's build and upstream): it refuses a function needing the
device's opt-in limit or more (``torch.OutOfMemoryError``, a ``RuntimeError``),
and above 48 KB it sets ``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`` to
that limit less the function's static shared memory.  So a record needs only
the ``shared`` size Triton compiled for, given to the load and to each launch.
torch 2.11 returns ``(function, n_regs, n_spills)``; 2.13 returns the module
first, ``(module, function, n_regs, n_spills)``, for ``_unload_kernel``.
Stitch keeps what it loads for the life of the process, so only the function
is used.
"""

from __future__ import annotations

from typing import Any

import torch


def launcher() -> Any:
    """``torch._C._StaticCudaLauncher`` (``_load_kernel``, ``_launch_kernel``)."""
    return torch._C._StaticCudaLauncher  # type: ignore[attr-defined]


def load_function(path: str, function: str, shared: int, device: int) -> int:
    """The ``CUfunction`` handle of ``function`` in the cubin at ``path``, loaded
    into ``device``'s context (NOTE: [loading a cubin through torch's static
    launcher]).  Raises ``RuntimeError`` when the driver refuses it."""
    with torch.cuda.device(device):
        loaded = launcher()._load_kernel(path, function, shared, device)
    if len(loaded) == 4:  # torch 2.13 on: (module, function, n_regs, n_spills)
        return int(loaded[1])
    return int(loaded[0])


__all__ = ["launcher", "load_function"]
