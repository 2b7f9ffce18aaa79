"""Everything that runs: the torch.compile backend, loading emitted source, the store, CUDA graphs.

Parts (see docs/architecture.md):

- ``config`` and ``settings``: ``CompilationConfig`` (vLLM's flat field names)
  and the section each part reads (split, compile, CUDA graphs, cache);
- ``pipeline``: the backend: split, plan each piece, compile it (or load it), stitch;
- ``saved``: ``aot_compile``, which saves the compiled forward and loads it
  without Dynamo;
- ``check``: ``check_model``, which names the compiled piece that changed the
  numbers;
- ``passes``: custom Inductor passes run on every compiled piece;
- ``store``: the persistent cache, its index, the debug dump and the fleet's
  shared store;
- ``cudagraph``: padding, capture per size, replay;
- ``loader``: compile emitted source and bind it to its pieces;
- ``compat``: what differs across torch 2.11 to 2.15, in one place;
- ``kernels``: the attention ops and their Triton kernels (not imported here);
- ``examples``: the example models (not imported here);
- ``hf`` and ``vllm``: transformers models and vLLM's engine (not imported here);
- ``harness``: processes the tests and benchmarks start (not imported here);
- ``cli``: the ``stitch`` command (not imported here);
- ``weights``: a model's load for serving, built on the meta device, its
  weights read on threads.

Each name below is imported from its part on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# NOTE: [import stitch.runtime loads what is used]
# Importing the package imports none of its parts: each name below is
# imported from its module on first use (PEP 562).  A process that needs
# one part (the weights' reader, the config, a saved forward's load) pays
# for that part only, and can start reading weights before the pipeline's
# modules (0.4 s and more, most of it torch's) are imported.
_EXPORTS = {
    "AOTCompiledModel": ".saved.aot",
    "CUDAGraphMode": ".config",
    "CheckReport": ".check",
    "CompilationConfig": ".config",
    "CompiledModel": ".pipeline.api",
    "Forward": ".check",
    "PiecewiseBackend": ".pipeline.api",
    "StitchBackend": ".pipeline.api",
    "StitchFunction": ".pipeline.api",
    "aot_compile": ".saved.aot",
    "check_model": ".check",
    "compilation_counter": ".counter",
    "compile_execution_fn": ".loader",
    "load_execution_module": ".loader",
    "source_filename": ".loader",
    "stitch_backend": ".pipeline.api",
    "wait_compiled": ".pipeline.tiered.controls",
}

if TYPE_CHECKING:
    from .check import CheckReport, Forward, check_model
    from .config import CompilationConfig, CUDAGraphMode
    from .counter import compilation_counter
    from .loader import compile_execution_fn, load_execution_module, source_filename
    from .pipeline.api import (
        CompiledModel,
        PiecewiseBackend,
        StitchBackend,
        StitchFunction,
        stitch_backend,
    )
    from .pipeline.tiered.controls import wait_compiled
    from .saved.aot import AOTCompiledModel, aot_compile


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stitch.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "AOTCompiledModel",
    "CUDAGraphMode",
    "CheckReport",
    "CompilationConfig",
    "CompiledModel",
    "Forward",
    "PiecewiseBackend",
    "StitchBackend",
    "StitchFunction",
    "aot_compile",
    "check_model",
    "compilation_counter",
    "compile_execution_fn",
    "load_execution_module",
    "source_filename",
    "stitch_backend",
    "wait_compiled",
]
