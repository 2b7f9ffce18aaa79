"""The one loader of the Triton kernel modules: imported on an op's first CUDA
call, and where Triton cannot be imported, the op's torch implementation runs."""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType

log = logging.getLogger("stitch")


@functools.cache
def optional_kernels(module: str, op: str) -> ModuleType | None:
    """The Triton kernel module ``module``, or None when Triton cannot be
    imported (asked once per module; ``op`` then runs its torch implementation)."""
    try:
        return importlib.import_module(module)
    except (
        Exception
    ) as exc:  # noqa: BLE001 - ImportError, or a Triton that cannot start
        log.warning(
            "stitch: Triton is unavailable (%s: %s); %s runs the torch "
            "implementation on CUDA",
            type(exc).__name__,
            exc,
            op,
        )
        return None
